package natsembed

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Defaults for the zero values of Options.
const (
	// DefaultHost is the address the server listens on without Host.
	DefaultHost = "127.0.0.1"
	// DefaultMaxPayload is the largest message the server accepts without
	// MaxPayload, in bytes (8 MiB; nats-server's own default is 1 MiB).
	DefaultMaxPayload int32 = 8 << 20
	// MaxPayloadLimit is the largest MaxPayload the server accepts, in
	// bytes: nats-server's max_pending (64 MiB).
	MaxPayloadLimit int32 = 64 << 20
	// DefaultMaxMemory bounds memory-backed streams without MaxMemory, in
	// bytes (256 MiB).
	DefaultMaxMemory int64 = 256 << 20
	// DefaultMaxStore bounds file-backed streams without MaxStore, in
	// bytes (1 TiB: a ceiling, not an allocation).
	DefaultMaxStore int64 = 1 << 40
	// DefaultSyncInterval is how often the server flushes the store to
	// disk without SyncAlways or SyncInterval (nats-server's default).
	DefaultSyncInterval = 2 * time.Minute
)

// Options configures a Server. Zero values take the defaults above; only
// StoreDir is required.
type Options struct {
	// StoreDir is the JetStream store directory, created if missing. duplex
	// uses <data dir>/jetstream.
	StoreDir string
	// Host is the address to listen on (default DefaultHost).
	Host string
	// Port is the client port; 0 picks a free port at the first start,
	// kept across restarts.
	Port int

	// SyncAlways makes JetStream write every message to disk (fsync)
	// before it acknowledges it: a power loss or kernel crash loses nothing
	// that was acknowledged, at a cost in throughput.
	//
	// Without it, JetStream acknowledges a message once it is written to
	// the operating system and flushes the store every SyncInterval: a
	// crash of the process alone loses nothing (the kernel still has the
	// data), but a power loss or kernel crash can lose up to SyncInterval
	// of acknowledged messages, which duplex may already have confirmed to
	// the source's replication slot.
	SyncAlways bool
	// SyncInterval is how often the store is flushed to disk when
	// SyncAlways is off (default DefaultSyncInterval). Set one of the two.
	SyncInterval time.Duration

	// MaxPayload is the largest message the server accepts, in bytes,
	// announced to every client (nats.Conn.MaxPayload); default
	// DefaultMaxPayload, at most MaxPayloadLimit.
	MaxPayload int32
	// MaxStore bounds the bytes all file-backed streams may hold (default
	// DefaultMaxStore).
	MaxStore int64
	// MaxMemory bounds the bytes all memory-backed streams may hold
	// (default DefaultMaxMemory).
	MaxMemory int64

	// Users, when set, are the only identities the server accepts: a client
	// that does not authenticate as one of them is refused. Empty: any
	// client that reaches the port may connect.
	Users []User

	// EncryptionKey, when set, makes JetStream encrypt its store at rest
	// with AES-256-GCM (nats-server's JetStreamKey and JetStreamCipher:
	// the server derives each stream's key from it). Empty: the store is
	// written in clear. A store written with one key is unreadable with
	// another (or without): the server then refuses to start JetStream.
	// Never logged.
	EncryptionKey string

	// Logger receives the server's log (default: discarded).
	Logger *slog.Logger
}

// User is an identity the embedded server accepts: Name and Password, or
// Nkey alone. All users share one account, with JetStream.
type User struct {
	// Name is the user name for user/password authentication.
	Name string
	// Password is the user's password, in clear or as a bcrypt hash
	// ("$2a$…").
	Password string
	// Nkey is a public user nkey ("U…", 56 characters) for nkey
	// authentication: the client proves it holds the seed by signing the
	// server's nonce, and no secret crosses the connection.
	Nkey string
	// Permissions limit the subjects the user may publish and subscribe
	// to; nil allows every subject. A JetStream client needs to publish to
	// "$JS.API.>" and to subscribe to its inbox ("_INBOX.>").
	Permissions *Permissions
}

// String names the user without its password.
func (u User) String() string {
	if u.Nkey != "" {
		return "nkey " + u.Nkey
	}
	return "user " + u.Name
}

// Permissions are a user's subject permissions.
type Permissions struct {
	Publish   SubjectPermission
	Subscribe SubjectPermission
}

// SubjectPermission allows and denies subjects (wildcards allowed). An
// empty Allow allows every subject that Deny does not name.
type SubjectPermission struct {
	Allow []string
	Deny  []string
}

// Validate checks the options.
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.StoreDir == "" {
		bad("StoreDir is empty")
	}
	if o.Port < 0 || o.Port > 65535 {
		bad("Port %d: want 0 to 65535", o.Port)
	}
	if o.SyncInterval < 0 {
		bad("SyncInterval %s: want a positive interval", o.SyncInterval)
	}
	if o.SyncAlways && o.SyncInterval != 0 {
		bad("SyncAlways and SyncInterval %s: set one of them", o.SyncInterval)
	}
	if o.MaxPayload < 0 || o.MaxPayload > MaxPayloadLimit {
		bad("MaxPayload %d bytes: want 1 to %d (0 for %d)", o.MaxPayload, MaxPayloadLimit, DefaultMaxPayload)
	}
	if o.MaxStore < 0 {
		bad("MaxStore %d bytes: want a positive size (0 for the default)", o.MaxStore)
	}
	if o.MaxMemory < 0 {
		bad("MaxMemory %d bytes: want a positive size (0 for the default)", o.MaxMemory)
	}
	names := map[string]bool{}
	for i, u := range o.Users {
		switch {
		case u.Nkey != "" && (u.Name != "" || u.Password != ""):
			bad("Users[%d]: set Nkey or Name and Password, not both", i)
		case u.Nkey != "":
			if len(u.Nkey) != 56 || !strings.HasPrefix(u.Nkey, "U") {
				bad("Users[%d]: Nkey %q is not a public user nkey (U…, 56 characters)", i, u.Nkey)
			}
		case u.Name == "":
			bad("Users[%d]: no Name or Nkey", i)
		case u.Password == "":
			bad("Users[%d]: %s has no Password", i, u)
		}
		key := u.Name + "\x00" + u.Nkey
		if names[key] {
			bad("Users[%d]: %s is listed twice", i, u)
		}
		names[key] = true
	}
	return errors.Join(errs...)
}

// withDefaults returns the options with zero values replaced by defaults.
func (o Options) withDefaults() Options {
	if o.Host == "" {
		o.Host = DefaultHost
	}
	if !o.SyncAlways && o.SyncInterval == 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.MaxStore == 0 {
		o.MaxStore = DefaultMaxStore
	}
	if o.MaxMemory == 0 {
		o.MaxMemory = DefaultMaxMemory
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}
