package contract_test

import (
	"fmt"

	"github.com/jetproj/jetproj/pkg/contract"
)

// What jetproj creates and uses for projection wallet_balance, e.g. to
// write the NATS permissions of a service that reads its derived events.
func Example() {
	const name = "wallet_balance"
	fmt.Println("source stream:", contract.EventsStream, contract.AllEvents)
	fmt.Println("own stream:   ", contract.ProjectionStream(name), contract.ProjectionSubjects(name))
	fmt.Println("slot leases:  ", contract.LeaseBucket(name), "in stream", contract.KVStream(contract.LeaseBucket(name)))
	fmt.Println("commands:     ", contract.ControlSubject(name))
	fmt.Println("linked:       ", contract.LinkedSubject("completed_orders", "project.order_fulfilment.shipment.s-1"))
	// Output:
	// source stream: EVENTS events.>
	// own stream:    PROJECT_WALLET_BALANCE project.wallet_balance.>
	// slot leases:   jetproj_leases_wallet_balance in stream KV_jetproj_leases_wallet_balance
	// commands:      jetproj.control.wallet_balance
	// linked:        completed_orders.order_fulfilment.shipment.s-1
}

// A subscriber reads the contract's headers of a derived event.
func Example_headers() {
	h := map[string]string{
		contract.HeaderEventType:      "WalletBalanceWasChanged",
		contract.HeaderProjection:     "wallet_balance",
		contract.HeaderPartition:      "wallet/w-1",
		contract.HeaderSourcePosition: "42",
		contract.HeaderCausationID:    contract.EventMsgID(42),
	}
	fmt.Println(h[contract.HeaderEventType], "from", h[contract.HeaderProjection], h[contract.HeaderPartition])
	fmt.Println("caused by", h[contract.HeaderCausationID], "at position", h[contract.HeaderSourcePosition])
	// Output:
	// WalletBalanceWasChanged from wallet_balance wallet/w-1
	// caused by event-42 at position 42
}
