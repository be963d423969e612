package mail

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	netmail "net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ReadFolder parses the mails a Folder wrote to dir, oldest first: for
// tests and tools that follow the links in them.
func ReadFolder(dir string) ([]Message, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var ms []Message
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, err
		}
		m, err := Parse(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n, err)
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// crlf turns the wire's line ends back into Go's.
var crlf = strings.NewReplacer("\r\n", "\n")

// Parse reads a message as compose writes it.
func Parse(raw []byte) (Message, error) {
	pm, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return Message{}, err
	}
	var dec mime.WordDecoder
	subject, err := dec.DecodeHeader(pm.Header.Get("Subject"))
	if err != nil {
		return Message{}, err
	}
	m := Message{To: pm.Header.Get("To"), Subject: subject}
	mt, params, err := mime.ParseMediaType(pm.Header.Get("Content-Type"))
	if err != nil {
		return Message{}, err
	}
	if !strings.HasPrefix(mt, "multipart/") {
		b, err := io.ReadAll(quotedprintable.NewReader(pm.Body))
		m.Text = crlf.Replace(string(b))
		return m, err
	}
	mr := multipart.NewReader(pm.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return m, nil
		}
		if err != nil {
			return Message{}, err
		}
		// multipart.Part decodes quoted-printable itself.
		b, err := io.ReadAll(p)
		if err != nil {
			return Message{}, err
		}
		switch t, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type")); t {
		case "text/plain":
			m.Text = crlf.Replace(string(b))
		case "text/html":
			m.HTML = crlf.Replace(string(b))
		}
	}
}
