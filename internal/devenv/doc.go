// Package devenv starts the embedded defaults that let jetproj run on a fresh
// machine with nothing configured: an embedded NATS server with JetStream,
// persisted in a data directory and synced on every write, and a throwaway
// PostgreSQL cluster started from the machine's own binaries.
//
// The demo uses both when NATS_URL or DATABASE_URL is empty; every test in the
// repository uses them (through package devtest) so that tests never touch a
// server that happens to run on the machine.
package devenv
