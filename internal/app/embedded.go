package app

import (
	"log/slog"
	"path/filepath"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/natsembed"
)

// embeddedOptions are the embedded NATS server's options from the
// configuration: the store under dataDir unless store_dir names one, on
// port (which the caller may override for a tool's own server).
func embeddedOptions(e config.Embedded, dataDir string, port int, log *slog.Logger) natsembed.Options {
	store := e.StoreDir
	if store == "" {
		store = filepath.Join(dataDir, "jetstream")
	}
	always, interval := e.SyncPolicy()
	o := natsembed.Options{
		StoreDir:      store,
		Host:          e.Host,
		Port:          port,
		SyncAlways:    always,
		SyncInterval:  interval,
		MaxPayload:    int32(e.MaxPayload), // config.Validate bounds it to 64 MiB
		MaxStore:      e.MaxStore,
		MaxMemory:     e.MaxMemory,
		EncryptionKey: e.EncryptionKey,
		Logger:        log,
	}
	for _, u := range e.Users {
		user := natsembed.User{Name: u.User, Password: u.Password, Nkey: u.Nkey}
		if len(u.Publish.Allow)+len(u.Publish.Deny)+len(u.Subscribe.Allow)+len(u.Subscribe.Deny) > 0 {
			user.Permissions = &natsembed.Permissions{
				Publish:   natsembed.SubjectPermission{Allow: u.Publish.Allow, Deny: u.Publish.Deny},
				Subscribe: natsembed.SubjectPermission{Allow: u.Subscribe.Allow, Deny: u.Subscribe.Deny},
			}
		}
		o.Users = append(o.Users, user)
	}
	return o
}
