package natsconn_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/jetproj/jetproj/internal/natsconn"
)

// startServer starts an embedded server with opts completed for the test
// and returns its client URL.
func startServer(t *testing.T, scheme string, opts *server.Options) string {
	t.Helper()
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir, opts.NoLog, opts.NoSigs = "127.0.0.1", server.RANDOM_PORT, true, t.TempDir(), true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	addr := srv.Addr().(*net.TCPAddr)
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, addr.Port)
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustFail connects with cfg and expects a refusal.
func mustFail(t *testing.T, cfg natsconn.Config) {
	t.Helper()
	if c, err := natsconn.Connect(ctx(t), cfg, nil); err == nil {
		c.Close()
		t.Fatal("connected")
	}
}

func TestConnectToken(t *testing.T) {
	t.Parallel()
	url := startServer(t, "nats", &server.Options{Authorization: "t0ken-s3cret"})
	c := connect(t, natsconn.Config{URL: url, Token: "t0ken-s3cret"}, nil)
	if got := roundTrip(t, c.JS, "T"); got != 1 {
		t.Fatalf("messages = %d", got)
	}
	mustFail(t, natsconn.Config{URL: url, Token: "wrong"})
}

func TestConnectNKey(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	url := startServer(t, "nats", &server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	c := connect(t, natsconn.Config{URL: url, NKeySeed: writeFile(t, "user.nk", seed)}, nil)
	if got := roundTrip(t, c.JS, "N"); got != 1 {
		t.Fatalf("messages = %d", got)
	}
	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	mustFail(t, natsconn.Config{URL: url, NKeySeed: writeFile(t, "other.nk", otherSeed)})
}

// TestConnectCredentials: decentralized authentication with an operator,
// an account with JetStream and a user's credentials file.
func TestConnectCredentials(t *testing.T) {
	t.Parallel()
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	op, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		t.Fatal(err)
	}
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	if err := resolver.Store(apub, ajwt); err != nil {
		t.Fatal(err)
	}
	// The server needs a system account in operator mode.
	skp, _ := nkeys.CreateAccount()
	spub, _ := skp.PublicKey()
	sjwt, err := jwt.NewAccountClaims(spub).Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	if err := resolver.Store(spub, sjwt); err != nil {
		t.Fatal(err)
	}
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.IssuerAccount = apub
	ujwt, err := uc.Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	useed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	if err != nil {
		t.Fatal(err)
	}
	url := startServer(t, "nats", &server.Options{TrustedOperators: []*jwt.OperatorClaims{op}, AccountResolver: resolver, SystemAccount: spub})
	c := connect(t, natsconn.Config{URL: url, Creds: writeFile(t, "user.creds", creds)}, nil)
	if got := roundTrip(t, c.JS, "C"); got != 1 {
		t.Fatalf("messages = %d", got)
	}
	mustFail(t, natsconn.Config{URL: url})
}

// pki is a CA with a server certificate for 127.0.0.1 and a client
// certificate, as PEM files.
type pki struct {
	ca, serverCert, serverKey, clientCert, clientKey string
	caPool                                           *x509.CertPool
}

func newPKI(t *testing.T) pki {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "jetproj test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	issue := func(name string, usage x509.ExtKeyUsage, serial int64) (string, string) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(k)
		return writeFile(t, name+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			writeFile(t, name+"-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
	}
	p := pki{ca: writeFile(t, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})), caPool: x509.NewCertPool()}
	p.caPool.AddCert(caCert)
	p.serverCert, p.serverKey = issue("server", x509.ExtKeyUsageServerAuth, 2)
	p.clientCert, p.clientKey = issue("client", x509.ExtKeyUsageClientAuth, 3)
	return p
}

func (p pki) serverTLS(t *testing.T, mutual bool) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if mutual {
		c.ClientCAs, c.ClientAuth = p.caPool, tls.RequireAndVerifyClientCert
	}
	return c
}

func TestConnectTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	t.Run("server TLS", func(t *testing.T) {
		url := startServer(t, "tls", &server.Options{TLS: true, TLSConfig: p.serverTLS(t, false), TLSTimeout: 5})
		c := connect(t, natsconn.Config{URL: url, TLSCA: p.ca}, nil)
		if got := roundTrip(t, c.JS, "S"); got != 1 {
			t.Fatalf("messages = %d", got)
		}
		// A client that does not trust the CA refuses the server.
		mustFail(t, natsconn.Config{URL: url})
	})
	t.Run("mutual TLS", func(t *testing.T) {
		url := startServer(t, "tls", &server.Options{TLS: true, TLSVerify: true, TLSConfig: p.serverTLS(t, true), TLSTimeout: 5})
		c := connect(t, natsconn.Config{URL: url, TLSCA: p.ca, TLSCert: p.clientCert, TLSKey: p.clientKey}, nil)
		if got := roundTrip(t, c.JS, "M"); got != 1 {
			t.Fatalf("messages = %d", got)
		}
		// Without a client certificate the server refuses.
		mustFail(t, natsconn.Config{URL: url, TLSCA: p.ca})
	})
}
