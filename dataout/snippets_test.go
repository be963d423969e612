package dataout_test

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/dataout"
)

// docSnippet returns the code block after <!-- snippet:lang --> in
// docs/data-out.md.
func docSnippet(t *testing.T, lang string) string {
	t.Helper()
	doc, err := os.ReadFile("../docs/data-out.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- snippet:" + lang + " -->\n```[a-z]*\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatalf("docs/data-out.md has no %s snippet", lang)
	}
	return string(m[1])
}

// TestDocSnippets runs the verification snippets of docs/data-out.md on a
// request the hub signed: each must accept it and refuse it with one byte
// of the body changed.
func TestDocSnippets(t *testing.T) {
	secret := dataout.NewSecret()
	body := dataout.Body(sample)
	header := dataout.Sign(secret, time.Now(), body)
	tampered := append([]byte{}, body...)
	tampered[len(tampered)-2] ^= 1
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

	for _, tc := range []struct {
		lang, tool string
		program    func(code string, body []byte) (name string, args []string, file string)
	}{
		{"go", "go", func(code string, body []byte) (string, []string, string) {
			imports, rest, _ := strings.Cut(code, ")\n")
			src := "package main\n\n" + strings.Replace(imports, "import (", "import (\n\t\"encoding/base64\"\n\t\"fmt\"", 1) + ")\n" + rest +
				"\nfunc main() {\n\tb, _ := base64.StdEncoding.DecodeString(`" + b64(body) + "`)\n\tfmt.Print(verify(`" + secret + "`, `" + header + "`, b))\n}\n"
			return "go", []string{"run", "main.go"}, src
		}},
		{"python", "python3", func(code string, body []byte) (string, []string, string) {
			src := code + "\nimport base64\nprint(str(verify('" + secret + "', '" + header + "', base64.b64decode('" + b64(body) + "'))).lower(), end='')\n"
			return "python3", []string{"main.py"}, src
		}},
		{"node", "node", func(code string, body []byte) (string, []string, string) {
			src := code + "\nprocess.stdout.write(String(verify('" + secret + "', '" + header + "', Buffer.from('" + b64(body) + "', 'base64'))));\n"
			return "node", []string{"main.js"}, src
		}},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			if _, err := exec.LookPath(tc.tool); err != nil {
				t.Skipf("%s is not installed", tc.tool)
			}
			code := docSnippet(t, tc.lang)
			for _, c := range []struct {
				body []byte
				want string
			}{{body, "true"}, {tampered, "false"}} {
				name, args, src := tc.program(code, c.body)
				dir := t.TempDir()
				if err := os.WriteFile(filepath.Join(dir, args[len(args)-1]), []byte(src), 0o600); err != nil {
					t.Fatal(err)
				}
				cmd := exec.Command(name, args...)
				cmd.Dir = dir
				cmd.Env = append(os.Environ(), "GO111MODULE=off")
				out, err := cmd.CombinedOutput()
				if err != nil || string(out) != c.want {
					t.Errorf("%s snippet: got %q (%v), want %s\n%s", tc.lang, out, err, c.want, src)
				}
			}
		})
	}
}
