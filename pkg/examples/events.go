package examples

// Events of the example domain. A handler registered with projection.On
// receives the events whose type is the struct's name; amounts are integer
// cents.

// WalletOpened opens a wallet (aggregate "wallet").
type WalletOpened struct {
	Owner string `json:"owner"`
}

// MoneyWasAddedToWallet deposits Amount cents.
type MoneyWasAddedToWallet struct {
	Amount int64 `json:"amount"`
}

// MoneyWasWithdrawnFromWallet withdraws Amount cents.
type MoneyWasWithdrawnFromWallet struct {
	Amount int64 `json:"amount"`
}

// TicketWasRegistered registers a ticket (aggregate "ticket") of a type such
// as "bug" or "feature".
type TicketWasRegistered struct {
	Type string `json:"type"`
}

// TicketWasClosed closes a ticket.
type TicketWasClosed struct{}

// OrderPlaced places an order (aggregate "order") worth Total cents.
type OrderPlaced struct {
	Customer string `json:"customer"`
	Total    int64  `json:"total"`
}

// PaymentSucceeded pays an order (aggregate "payment").
type PaymentSucceeded struct {
	OrderID string `json:"orderId"`
}

// ShipmentDelivered delivers an order (aggregate "shipment").
type ShipmentDelivered struct {
	OrderID string `json:"orderId"`
	Carrier string `json:"carrier"`
}

// WalletBalanceWasChanged is derived by wallet_balance: one per wallet per
// batch, with the balance after the batch.
type WalletBalanceWasChanged struct {
	WalletID string `json:"walletId"`
	Balance  int64  `json:"balance"`
}

// OrderFullyCompleted is derived by order_fulfilment once an order was
// placed, paid and delivered, enriched with the order's customer and total
// and the shipment's carrier. It is linked to the stream completed_orders.
type OrderFullyCompleted struct {
	OrderID  string `json:"orderId"`
	Customer string `json:"customer"`
	Total    int64  `json:"total"`
	Carrier  string `json:"carrier"`
}

// WalletBecameHighValue is derived by high_value_wallets when a wallet's
// balance reaches HighValueThreshold from below.
type WalletBecameHighValue struct {
	WalletID string `json:"walletId"`
	Balance  int64  `json:"balance"`
}

// Event type names, as stored in eventstore.events.event_type.
const (
	TypeWalletOpened                = "WalletOpened"
	TypeMoneyWasAddedToWallet       = "MoneyWasAddedToWallet"
	TypeMoneyWasWithdrawnFromWallet = "MoneyWasWithdrawnFromWallet"
	TypeTicketWasRegistered         = "TicketWasRegistered"
	TypeTicketWasClosed             = "TicketWasClosed"
	TypeOrderPlaced                 = "OrderPlaced"
	TypePaymentSucceeded            = "PaymentSucceeded"
	TypeShipmentDelivered           = "ShipmentDelivered"
	TypeWalletBalanceWasChanged     = "WalletBalanceWasChanged"
	TypeOrderFullyCompleted         = "OrderFullyCompleted"
	TypeWalletBecameHighValue       = "WalletBecameHighValue"
)
