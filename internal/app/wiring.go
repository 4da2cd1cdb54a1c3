package app

import (
	pgcapture "github.com/duplex-cdc/duplex/capture/postgres"
	"github.com/duplex-cdc/duplex/pipeline"
)

// Where the stages meet: the PostgreSQL source is a pipeline.Source that
// can also hold its position back (pipeline.Retainer) while entities are
// held. (The sink's checks are in sinks/postgres; the producer's
// capture.Handler check is in pipeline.)
var (
	_ pipeline.Source   = (*pgcapture.Source)(nil)
	_ pipeline.Retainer = (*pgcapture.Source)(nil)
)
