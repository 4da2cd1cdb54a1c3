// Package sinks holds the writers that apply canonical transactions to
// target systems, one subpackage per technology (sinks/postgres). Each
// satisfies pipeline.Sink.
package sinks
