// Package examples embeds the example schemas, mappings and configurations
// so that `duplex demo` and the tests can use them from any directory.
package examples

import "embed"

// OrderToCash holds order-to-cash/{crm.sql,erp.sql,crm-role.sql,erp-role.sql,mapping.yaml,duplex.yaml,
// duplex-nats.yaml,duplex-cluster.yaml}.
//
//go:embed order-to-cash/*.sql order-to-cash/*.yaml
var OrderToCash embed.FS
