package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/ops"
)

// tool holds what the operating commands share: the configuration, the
// data directory and the address of a running instance.
type tool struct {
	cfgPath, dataDir, listen string
}

func (t *tool) flags(c *cobra.Command) {
	c.Flags().StringVar(&t.cfgPath, "config", "duplex.yaml", "configuration file")
	c.Flags().StringVar(&t.dataDir, "data-dir", "", "data directory of the embedded NATS store, when no duplex runs (default $DUPLEX_DATA_DIR, then data_dir of the config, then ./data)")
	c.Flags().StringVar(&t.listen, "listen", envOr("DUPLEX_LISTEN", ops.DefaultListen), "address of a running duplex's status listener")
}

func (t *tool) config() (*config.Config, error) {
	cfg, err := config.Load(t.cfgPath, os.Getenv)
	if err != nil {
		return nil, err
	}
	if t.dataDir == "" {
		t.dataDir = envOr("DUPLEX_DATA_DIR", cfg.DataDir)
	}
	return cfg, nil
}

// running asks a running instance for its status; ok is false when none
// answers.
func (t *tool) running(ctx context.Context) (*app.Status, bool) {
	if t.listen == "" || t.listen == "off" {
		return nil, false
	}
	var st app.Status
	if err := getJSON(ctx, "http://"+t.listen+"/api/status", &st); err != nil {
		return nil, false
	}
	return &st, true
}

func getJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
