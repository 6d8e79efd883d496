package devtest_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func TestPostgresAndNATS(t *testing.T) {
	ctx := context.Background()
	url := devtest.Postgres(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("select 1 = %d, %v", one, err)
	}

	n := devtest.NATS(t)
	_, js := devtest.Connect(t, n)
	if _, err := js.AccountInfo(ctx); err != nil {
		t.Fatalf("jetstream account info: %v", err)
	}
}

func TestPostgresRestart(t *testing.T) {
	ctx := context.Background()
	url := devtest.Postgres(t)
	c := devtest.Cluster(t)
	if err := c.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, url); err == nil {
		t.Fatal("connect to a killed server succeeded")
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	conn.Close(ctx)
}
