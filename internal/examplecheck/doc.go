// Package examplecheck holds what tests, benchmarks and the demo use to
// check the example projections (package examples): reference folds of the
// event store (FoldWallets, FoldTickets, FoldOrders …), readers of the read
// models and derived events (ReadWallets, ReadDerived …), and Verify /
// VerifyDerived, which compare the two. It is not part of the projection
// API: the projections themselves are in pkg/examples.
package examplecheck
