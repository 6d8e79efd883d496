package projection_test

import (
	"context"
	"fmt"

	"github.com/jetproj/jetproj/pkg/projection"
)

type OrderShipped struct {
	Carrier string `json:"carrier"`
}

type Order struct{ Shipped bool }

// A handler emits a derived event for the projection's own stream and links
// one to a curated stream. A stream name that cannot be one is refused when
// the handler emits, so the partition fails visibly rather than the event
// going nowhere.
func ExampleContext_LinkTo() {
	p := projection.New[Order]("orders", projection.FromAggregates("order"))
	projection.On(p, func(_ context.Context, c *projection.Context[Order], e projection.Event[OrderShipped]) error {
		c.State.Shipped = true
		if err := c.Emit("OrderWasShipped", e.Data); err != nil {
			return err
		}
		return c.LinkTo(e.Data.Carrier, "OrderWasShipped", e.Data)
	})
	d := p.Def()
	for _, carrier := range []string{"shipped_orders", "not a stream"} {
		pc := &projection.PartitionContext{Key: "order/o-1", State: d.NewState()}
		err := d.Apply(context.Background(), pc, projection.Meta{Type: "OrderShipped", Raw: []byte(`{"carrier":"` + carrier + `"}`)})
		fmt.Println(len(pc.Emitted), err != nil)
	}
	// Output:
	// 2 false
	// 1 true
}
