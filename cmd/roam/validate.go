package main

import (
	"errors"
	"fmt"
	"io"
)

// errValidate is runValidate's error once it has printed the problems:
// exit status 1 and nothing more to print.
var errValidate = errors.New("the config file has errors")

// runValidate checks the config file FILE without starting anything: the
// file itself, and each of its [server] and [client] tables with the
// checks the command's own parse runs (as if it ran with no other flags).
// It prints "FILE: ok", or every problem one a line
// (FILE:LINE: key "...": ...) on stderr and returns errValidate.
func runValidate(args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 || args[0] == "" || args[0][0] == '-' {
		return usagef("validate: expected one argument, the config FILE (roam validate FILE)")
	}
	file := args[0]
	cfg := loadConfig(file)
	errs := cfg.errs
	if len(errs) == 0 && cfg.table("server") == nil && cfg.table("client") == nil {
		errs = append(errs, &configError{file: file, msg: "no [server] or [client] table: expected at least one"})
	}
	// The file-level errors are reported once, not once per table.
	tables := &configFile{path: cfg.path, root: cfg.root, tables: cfg.tables}
	if tables.table("server") != nil {
		f, fs := newServerFlags()
		errs = append(errs, f.load(fs, tables)...)
	}
	if tables.table("client") != nil {
		f, fs := newClientFlags()
		errs = append(errs, f.load(fs, tables)...)
	}
	if len(errs) > 0 {
		sortErrors(errs)
		for _, e := range errs {
			fmt.Fprintln(stderr, e)
		}
		return errValidate
	}
	fmt.Fprintf(stdout, "%s: ok\n", file)
	return nil
}
