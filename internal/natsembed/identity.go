package natsembed

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// IdentityDirName is the directory under the data directory that keeps
// the seeds of the embedded server's identities.
const IdentityDirName = "nkeys"

// Identity is a client identity of the embedded server: a user nkey. Its
// seed is kept in <dir>/<name>.nk (mode 0600, in a 0700 directory), the
// format the nats CLI reads with --nkey; only its public key goes into the
// server's configuration, and a client proves it holds the seed by signing
// the server's nonce, so no secret crosses the connection.
type Identity struct {
	// Name is the identity's name ("operator", "capture-crm", …), also
	// the seed file's name without .nk.
	Name string
	// PublicKey is the user nkey ("U…").
	PublicKey string
	// Path is the seed file.
	Path string
	kp   nkeys.KeyPair
}

// ConnectOption authenticates a connection as the identity.
func (id *Identity) ConnectOption() nats.Option {
	return nats.Nkey(id.PublicKey, id.kp.Sign)
}

// User is the server-side identity: the public key with permissions.
func (id *Identity) User(p *Permissions) User { return User{Nkey: id.PublicKey, Permissions: p} }

// LoadIdentities reads the identities of names from dir. A missing one is
// generated (a new user nkey) when create is set, and reported otherwise.
// Creation is atomic (written to a temporary file, then linked to its
// name), so processes starting together agree on one seed. A seed file
// that the group or others may read is refused rather than used: anyone
// who can read it can connect as that identity.
func LoadIdentities(dir string, names []string, create bool) (map[string]*Identity, error) {
	if create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("nats identities: %w", err)
		}
	}
	out := map[string]*Identity{}
	for _, name := range names {
		if name == "" || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
			return nil, fmt.Errorf("nats identity %q: not a file name", name)
		}
		id, err := loadIdentity(dir, name, create)
		if err != nil {
			return nil, err
		}
		out[name] = id
	}
	return out, nil
}

func loadIdentity(dir, name string, create bool) (*Identity, error) {
	path := filepath.Join(dir, name+".nk")
	id, err := readIdentity(path, name)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return id, err
	}
	if !create {
		return nil, fmt.Errorf("nats identity %s: %s does not exist (it is generated when duplex first starts the embedded server with this data directory)", name, path)
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("nats identity %s: generate nkey: %w", name, err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("nats identity %s: %w", name, err)
	}
	tmp, err := os.CreateTemp(dir, "."+name+"-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("nats identity %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600.
	_, err = tmp.Write(append(seed, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("nats identity %s: write %s: %w", name, tmp.Name(), err)
	}
	// Link fails if another process created the seed meanwhile: then that
	// one is the identity.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("nats identity %s: %w", name, err)
	}
	return readIdentity(path, name)
}

func readIdentity(path, name string) (*Identity, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("nats identity %s: %s has mode %s: others than its owner may read it; chmod 600 it (and consider the seed exposed)", name, path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("nats identity %s: %w", name, err)
	}
	kp, err := nkeys.FromSeed(bytes.TrimSpace(b))
	if err != nil {
		return nil, fmt.Errorf("nats identity %s: %s holds no user nkey seed: %w", name, path, err)
	}
	pub, err := kp.PublicKey()
	if err != nil || !strings.HasPrefix(pub, "U") {
		return nil, fmt.Errorf("nats identity %s: %s holds no user nkey seed", name, path)
	}
	return &Identity{Name: name, PublicKey: pub, Path: path, kp: kp}, nil
}
