package subject_test

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jetproj/jetproj/pkg/subject"
)

func ExampleEncodeToken() {
	fmt.Println(subject.EncodeToken("3f2504e0-4f89-11d3-9a0c-0305e82c3301"))
	fmt.Println(subject.EncodeToken("ann@example.com"))
	fmt.Println(subject.EncodeToken("café"))
	fmt.Println(subject.EncodeToken(""))
	fmt.Println(subject.EncodeToken(strings.Repeat("x", 200)))
	// Output:
	// 3f2504e0-4f89-11d3-9a0c-0305e82c3301
	// ann%40example%2Ecom
	// caf%C3%A9
	// ~
	// ~aa20c23e3201834050679e1d88941b9a
}

func ExampleDecodeToken() {
	s, err := subject.DecodeToken("ann%40example%2Ecom")
	fmt.Println(s, err)
	_, err = subject.DecodeToken("a%2eb")
	fmt.Println(errors.Is(err, subject.ErrInvalidToken))
	_, err = subject.DecodeToken(subject.EncodeToken(strings.Repeat("x", 200)))
	fmt.Println(errors.Is(err, subject.ErrHashedToken))
	// Output:
	// ann@example.com <nil>
	// true
	// true
}

func ExampleEvent() {
	fmt.Println(subject.Event("wallet", "123"))
	fmt.Println(subject.Event("order.line", "a b"))
	fmt.Println(subject.EventFilter("wallet"))
	// Output:
	// events.wallet.123
	// events.order%2Eline.a%20b
	// events.wallet.*
}

func ExampleParseEvent() {
	typ, id, err := subject.ParseEvent("events.order%2Eline.a%20b")
	fmt.Printf("%q %q %v\n", typ, id, err)
	// Output:
	// "order.line" "a b" <nil>
}

func ExampleProjection() {
	fmt.Println(subject.Projection("wallet_balance", "wallet", "123"))
	fmt.Println(subject.ProjectionFilter("wallet_balance"))
	// Output:
	// project.wallet_balance.wallet.123
	// project.wallet_balance.>
}
