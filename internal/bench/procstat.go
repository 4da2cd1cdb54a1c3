package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the times in /proc/<pid>/stat: USER_HZ, 100 on
// every Linux architecture (proc(5), "clock ticks").
const userHZ = 100

// procTimes are a process's CPU times from /proc/<pid>/stat (Linux).
type procTimes struct {
	ppid int
	// self is utime + stime; children cutime + cstime, the CPU of its
	// children that it waited for (that exited).
	self, children time.Duration
}

// readProcTimes reads /proc/<pid>/stat.
func readProcTimes(pid int) (procTimes, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procTimes{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// the fields that follow start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procTimes{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15,
	// cutime 16, cstime 17.
	if len(f) < 15 {
		return procTimes{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	n := func(k int) int64 { v, _ := strconv.ParseInt(f[k], 10, 64); return v }
	tick := time.Second / userHZ
	return procTimes{
		ppid:     int(n(1)),
		self:     time.Duration(n(11)+n(12)) * tick,
		children: time.Duration(n(13)+n(14)) * tick,
	}, nil
}

// procCPU is a process's own CPU time (user + system), 0 when it is gone
// or pid is 0.
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	t, err := readProcTimes(pid)
	if err != nil {
		return 0
	}
	return t.self
}

// postmasterPid reads the postmaster's pid from the first line of
// <data dir>/postmaster.pid (PostgreSQL's lock file).
func postmasterPid(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("postmaster pid: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0, fmt.Errorf("postmaster pid in %s: %w", dataDir, err)
	}
	return pid, nil
}

// clusterCPU is the CPU time of a PostgreSQL cluster so far: the
// postmaster's own, that of its children that exited (its cutime and
// cstime: backends, walsenders, workers that ended) and that of every live
// child (backends, walsenders, apply workers, checkpointer, ...).
func clusterCPU(postmaster int) time.Duration {
	pm, err := readProcTimes(postmaster)
	if err != nil {
		return 0
	}
	total := pm.self + pm.children
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return total
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		t, err := readProcTimes(pid)
		if err != nil || t.ppid != postmaster {
			continue
		}
		total += t.self + t.children
	}
	return total
}

// peakRSS is a process's peak resident set size (VmHWM of
// /proc/<pid>/status) in bytes, 0 when unknown.
func peakRSS(pid int) int64 {
	v := procStatus(pid, "VmHWM")
	kb, ok := strings.CutSuffix(v, " kB")
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(kb), 10, 64)
	if err != nil {
		return 0
	}
	return n * 1024
}
