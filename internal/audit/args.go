package audit

import (
	"slices"
	"strings"

	"github.com/duplex-cdc/duplex/internal/redact"
)

// hidden replaces a secret.
const hidden = "xxxxx"

// sensitive are parts of flag names whose values are secrets.
var sensitive = []string{"password", "passwd", "token", "secret", "seed", "dsn", "creds", "key"}

// RedactArgs returns the command-line arguments args with secrets
// replaced by "xxxxx": the value of any flag whose name holds password,
// token, secret, seed, dsn, creds or key (--flag value and --flag=value);
// any argument holding "://" shown as scheme://host:port (redact.URL);
// and every occurrence of each of secrets (the configuration's,
// config.Config.Secrets) anywhere.
func RedactArgs(args []string, secrets ...string) []string {
	out := make([]string, 0, len(args))
	hideNext := false
	for _, a := range args {
		switch {
		case hideNext:
			a, hideNext = hidden, false
		case strings.HasPrefix(a, "-"):
			name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if isSensitive(name) {
				if hasValue {
					a = a[:strings.Index(a, "=")+1] + hidden
				} else {
					hideNext = true
				}
			}
		}
		if strings.Contains(a, "://") {
			a = redact.URL(a)
		}
		out = append(out, Secrets(a, secrets...))
	}
	return out
}

// Secrets returns s with every occurrence of each of secrets replaced by
// "xxxxx"; longer secrets first, so that a DSN goes before the password
// in it.
func Secrets(s string, secrets ...string) string {
	sorted := slices.Clone(secrets)
	slices.SortFunc(sorted, func(a, b string) int { return len(b) - len(a) })
	for _, sec := range sorted {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, hidden)
		}
	}
	return s
}

func isSensitive(flag string) bool {
	flag = strings.ToLower(flag)
	for _, s := range sensitive {
		if strings.Contains(flag, s) {
			return true
		}
	}
	return false
}
