// Command roost is the Roost IoT hub: `roost serve` runs all of it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var help *helpError
		if errors.As(err, &help) {
			fmt.Fprint(os.Stdout, help.text)
			return
		}
		fmt.Fprintln(os.Stderr, "roost:", err)
		os.Exit(1)
	}
}

// commands are roost's commands, in the order help lists them.
var commands = [][2]string{
	{roleAll, "run the whole hub in one process (API, console and MQTT) with embedded defaults"},
	{roleControl, "run the API, console and billing only (Postgres; data-plane nodes run apart)"},
	{roleData, "run the MQTT listeners and tenant brokers only (Postgres, a shared session store)"},
	{"migrate", "apply database migrations and exit"},
	{"version", "print the version"},
}

// usage is roost's help: its commands, aligned.
var usage = func() string {
	var b strings.Builder
	b.WriteString("usage: roost <command> [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-14s %s\n", c[0], c[1])
	}
	b.WriteString("\nRun 'roost <command> -h' for the command's flags.\n")
	return b.String()
}()

// run is the whole program; tests call it directly.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case roleAll, roleControl, roleData:
		return serve(ctx, cmd, rest, getenv, stdout, stderr)
	case "migrate":
		return migrate(ctx, rest, getenv, stdout)
	case "version":
		return version(stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}
