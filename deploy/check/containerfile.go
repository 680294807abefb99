package check

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Instruction is one Containerfile instruction after line continuations are
// joined: Cmd upper-cased (FROM, RUN, ...), Args the rest of the line, Line
// the 1-based line it starts on and Stage the 0-based build stage it is in.
type Instruction struct {
	Cmd   string
	Args  string
	Line  int
	Stage int
}

// ParseContainerfile splits src into instructions. Comment lines and blank
// lines are dropped (also inside a continued instruction, as Docker does);
// a trailing backslash continues an instruction on the next line. It keeps
// no reference to src.
func ParseContainerfile(src []byte) ([]Instruction, error) {
	var out []Instruction
	var cur strings.Builder
	start, stage := 0, -1
	sc := bufio.NewScanner(bytes.NewReader(src))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		cont := strings.HasSuffix(line, "\\")
		cur.WriteString(strings.TrimSuffix(line, "\\"))
		cur.WriteByte(' ')
		if cont {
			continue
		}
		full := strings.TrimSpace(cur.String())
		cur.Reset()
		cmd, args, _ := strings.Cut(full, " ")
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		if stage < 0 && cmd != "ARG" {
			return nil, fmt.Errorf("line %d: %s before the first FROM (only ARG may come first)", start, cmd)
		}
		out = append(out, Instruction{Cmd: cmd, Args: strings.TrimSpace(args), Line: start, Stage: stage})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cur.Len() != 0 {
		return nil, fmt.Errorf("line %d: the last instruction ends in a line continuation", start)
	}
	if stage < 0 {
		return nil, errors.New("no FROM instruction")
	}
	return out, nil
}

var argRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

// LintContainerfile checks the rules deploy/container/Containerfile must
// keep (name is used in the messages): every FROM names a tag or digest
// that is not "latest" (ARG defaults before the first FROM are substituted),
// a build stage runs `go generate ./web` and a static (CGO_ENABLED=0) `go
// build` of ./cmd/roam, the final stage runs as a non-root USER, EXPOSEs
// 4433/udp and 4433/tcp, has a HEALTHCHECK with a command and an exec-form
// ENTRYPOINT. All problems are returned, joined.
func LintContainerfile(name string, src []byte) error {
	ins, err := ParseContainerfile(src)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	var errs []error
	bad := func(line int, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: %s", name, line, fmt.Sprintf(format, args...)))
	}
	globalArgs := map[string]string{}
	last := ins[len(ins)-1].Stage
	var built, generated bool
	var user, expose, health, entry *Instruction
	for i := range ins {
		in := &ins[i]
		switch in.Cmd {
		case "ARG":
			if in.Stage < 0 {
				k, v, _ := strings.Cut(in.Args, "=")
				globalArgs[k] = v
			}
		case "FROM":
			image := strings.Fields(in.Args)
			if len(image) == 0 {
				bad(in.Line, "FROM without an image")
				continue
			}
			ref := argRef.ReplaceAllStringFunc(image[0], func(m string) string {
				name := argRef.FindStringSubmatch(m)[1]
				v := globalArgs[name]
				if v == "" {
					bad(in.Line, "FROM %s: ARG %s has no default before the first FROM, so the image is not pinned", image[0], name)
				}
				return v
			})
			if strings.Contains(ref, "@sha256:") {
				continue
			}
			slash := strings.LastIndex(ref, "/")
			_, tag, ok := strings.Cut(ref[slash+1:], ":")
			switch {
			case !ok || tag == "":
				bad(in.Line, "FROM %s: pin the image to a tag or digest (expected IMAGE:TAG)", image[0])
			case tag == "latest":
				bad(in.Line, "FROM %s: the tag latest is not a pin (expected a version tag or digest)", image[0])
			}
		case "RUN":
			if in.Stage == last {
				continue
			}
			if strings.Contains(in.Args, "go generate ./web") {
				generated = true
			}
			if strings.Contains(in.Args, "go build") && strings.Contains(in.Args, "./cmd/roam") {
				built = true
				if !strings.Contains(in.Args, "CGO_ENABLED=0") {
					bad(in.Line, "go build of ./cmd/roam without CGO_ENABLED=0: the runtime image has no C library")
				}
			}
		case "USER":
			if in.Stage == last {
				user = in
			}
		case "EXPOSE":
			if in.Stage == last {
				expose = in
			}
		case "HEALTHCHECK":
			if in.Stage == last {
				health = in
			}
		case "ENTRYPOINT":
			if in.Stage == last {
				entry = in
			}
		}
	}
	end := ins[len(ins)-1].Line
	if !generated {
		bad(end, "no build stage runs `go generate ./web` (the binary would embed no browser client)")
	}
	if !built {
		bad(end, "no build stage runs `go build ... ./cmd/roam`")
	}
	if user == nil {
		bad(end, "the final stage has no USER: it would run as root (expected a non-root uid, e.g. USER 65532:65532)")
	} else {
		u, _, _ := strings.Cut(user.Args, ":")
		if u == "0" || u == "root" || u == "" {
			bad(user.Line, "USER %s: the final stage must run as a non-root user", user.Args)
		}
	}
	if expose == nil {
		bad(end, "the final stage has no EXPOSE (expected 4433/udp 4433/tcp)")
	} else {
		ports := map[string]bool{}
		for _, p := range strings.Fields(expose.Args) {
			ports[strings.ToLower(p)] = true
		}
		for _, want := range []string{"4433/udp", "4433/tcp"} {
			if !ports[want] {
				bad(expose.Line, "EXPOSE %s: missing %s", expose.Args, want)
			}
		}
	}
	if health == nil {
		bad(end, "the final stage has no HEALTHCHECK (expected HEALTHCHECK ... CMD [...])")
	} else if !strings.Contains(health.Args, "CMD") {
		bad(health.Line, "HEALTHCHECK %s: expected a CMD to run", health.Args)
	}
	if entry == nil {
		bad(end, "the final stage has no ENTRYPOINT")
	} else if !strings.HasPrefix(entry.Args, "[") {
		bad(entry.Line, "ENTRYPOINT %s: use the exec form [\"/usr/local/bin/roam\"], so signals reach roam and not a shell", entry.Args)
	}
	return errors.Join(errs...)
}
