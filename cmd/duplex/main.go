// Command duplex keeps a CRM and an ERP PostgreSQL database in step by
// change data capture over NATS JetStream. See `duplex --help`.
package main

import (
	"os"

	"github.com/duplex-cdc/duplex/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
