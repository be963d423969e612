package mail

import (
	"bytes"
	"embed"
	"fmt"
	htmltemplate "html/template"
	"strings"
	texttemplate "text/template"
)

// The templates: for each name, <name>.txt (which defines "subject" as
// well as the text) and <name>.html. HTML is escaped by html/template.
//
//go:embed templates
var files embed.FS

var (
	textTemplates = texttemplate.Must(texttemplate.ParseFS(files, "templates/*.txt"))
	htmlTemplates = htmltemplate.Must(htmltemplate.ParseFS(files, "templates/*.html"))
)

// The templates there are, and the data each expects.
const (
	// TemplateVerify: {Link, Hours} asks a person to confirm their email.
	TemplateVerify = "verify"
	// TemplateReset: {Link, Minutes} carries a password-reset link.
	TemplateReset = "reset"
	// TemplatePasswordChanged: {When, How} tells a person their password
	// changed ("changed", "reset") and that their other sessions ended.
	TemplatePasswordChanged = "password_changed"
	// TemplateInvite: {Tenant, Inviter, Role, Link, Days} invites a person
	// into a tenant.
	TemplateInvite = "invite"
)

// Render writes the message named name to to from data.
func Render(name, to string, data any) (Message, error) {
	var subject, text, html bytes.Buffer
	t := textTemplates.Lookup(name + ".txt")
	h := htmlTemplates.Lookup(name + ".html")
	if t == nil || h == nil {
		return Message{}, fmt.Errorf("no mail template %q", name)
	}
	// The subject is defined inside the text template under
	// "<name>.subject" so that templates do not clash.
	if err := textTemplates.ExecuteTemplate(&subject, name+".subject", data); err != nil {
		return Message{}, fmt.Errorf("mail %s subject: %w", name, err)
	}
	if err := t.Execute(&text, data); err != nil {
		return Message{}, fmt.Errorf("mail %s text: %w", name, err)
	}
	if err := h.Execute(&html, data); err != nil {
		return Message{}, fmt.Errorf("mail %s html: %w", name, err)
	}
	return Message{To: to, Subject: strings.TrimSpace(subject.String()), Text: text.String(), HTML: html.String()}, nil
}
