package deploy_test

import (
	"encoding/json"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/duplex-cdc/duplex/internal/ops"
)

// metricsUsed parses a PromQL expression and returns the metric names it
// selects.
func metricsUsed(t *testing.T, where, expr string) []string {
	t.Helper()
	p := parser.NewParser(parser.Options{})
	e, err := p.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q does not parse: %v", where, expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

func checkExists(t *testing.T, where string, names []string) {
	t.Helper()
	known := ops.MetricNames()
	for _, n := range names {
		if n != "up" && !slices.Contains(known, n) {
			t.Errorf("%s uses metric %s, which duplex does not expose", where, n)
		}
	}
}

// TestAlertRules: the rules parse with Prometheus's own rule parser, every
// expression parses, every metric they use exists, and the alerts the
// operators rely on are there.
func TestAlertRules(t *testing.T) {
	groups, errs := rulefmt.ParseFile("prometheus/duplex-alerts.yml", false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatalf("rules do not parse: %v", errs)
	}
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			checkExists(t, "alert "+r.Alert, metricsUsed(t, "alert "+r.Alert, r.Expr))
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s lacks a summary or description", r.Alert)
			}
			if r.Labels["severity"] == "" {
				t.Errorf("alert %s has no severity", r.Alert)
			}
		}
	}
	for _, want := range []string{"DuplexLagHigh", "DuplexRetainedWALHigh", "DuplexDeadLettersPresent", "DuplexFlowStopped"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alert %s missing", want)
		}
	}
	b, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil || !strings.Contains(string(b), "duplex-alerts.yml") || !strings.Contains(string(b), "9464") {
		t.Errorf("prometheus.yml does not load the rules or scrape duplex: %v", err)
	}
}

// TestGrafanaDashboard: the dashboard is JSON with unique panel ids, every
// panel has a query, every query parses (template variables substituted)
// and uses only metrics duplex exposes.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/duplex-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query string `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	subst := strings.NewReplacer("$__rate_interval", "5m", "$flow", "to-erp", "$source", "crm")
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			where := "panel " + p.Title
			checkExists(t, where, metricsUsed(t, where, subst.Replace(tg.Expr)))
		}
	}
	if len(dash.Panels) < 8 {
		t.Errorf("only %d panels", len(dash.Panels))
	}
	for _, v := range dash.Templating.List {
		// label_values(metric, label)
		q := strings.TrimSuffix(strings.TrimPrefix(v.Query, "label_values("), ")")
		metric := strings.TrimSpace(strings.Split(q, ",")[0])
		checkExists(t, "variable "+v.Name, []string{metric})
	}
}
