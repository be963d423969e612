package tenants

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxTopicLen is MQTT's limit on a topic name or filter, in bytes.
const maxTopicLen = 65535

// MaxTopicLevels is the most levels a topic name or filter may have, here
// and on the data plane (EMQX's default max_topic_levels). mochi walks its
// topic tree finding each level from the start of the topic again, so a
// walk costs the square of the levels: a 64 KiB topic of 32,000 one-byte
// levels cost about a second of CPU per PUBLISH, and a filter of as many
// levels took 3.4 MB of tree per SUBSCRIBE.
const MaxTopicLevels = 128

// TopicLevels is the number of levels of a topic name or filter.
func TopicLevels(s string) int { return strings.Count(s, "/") + 1 }

// FilterLevels is the number of levels of a subscription's filter, a
// shared subscription's $share/{group}/ prefix left out: mochi's topic
// tree leaves it out too (matching "$share" in any case, as it does).
func FilterLevels(f string) int { return TopicLevels(SharedFilter(f)) }

// ValidateFilter reports why f is not a valid MQTT topic filter, or nil.
// '+' must fill a whole level and '#' must be the whole last level.
func ValidateFilter(f string) error {
	if err := validateTopicText(f); err != nil {
		return err
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return errors.New("'#' must be the last level")
		case l != "#" && strings.Contains(l, "#"):
			return errors.New("'#' must fill a whole level")
		case l != "+" && strings.Contains(l, "+"):
			return errors.New("'+' must fill a whole level")
		}
	}
	return nil
}

// ValidateTopic reports why t is not a valid MQTT topic name to publish to,
// or nil.
func ValidateTopic(t string) error {
	if err := validateTopicText(t); err != nil {
		return err
	}
	if strings.ContainsAny(t, "+#") {
		return errors.New("a topic name must not contain wildcards")
	}
	return nil
}

func validateTopicText(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > maxTopicLen:
		return errors.New("must be at most 65535 bytes")
	case TopicLevels(s) > MaxTopicLevels:
		return fmt.Errorf("must have at most %d levels", MaxTopicLevels)
	case !utf8.ValidString(s):
		return errors.New("must be valid UTF-8")
	case strings.ContainsRune(s, 0):
		return errors.New("must not contain NUL")
	}
	return nil
}

// MatchTopic reports whether topic name t matches filter f.
func MatchTopic(f, t string) bool { return FilterCovers(f, t) }

// FilterCovers reports whether every topic that filter sub matches is also
// matched by filter f. For a topic name sub (no wildcards) that is plain
// matching. As the MQTT spec requires, a filter starting with a wildcard does
// not match topics starting with '$'.
func FilterCovers(f, sub string) bool {
	if strings.HasPrefix(sub, "$") && (strings.HasPrefix(f, "+") || strings.HasPrefix(f, "#")) {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(f, "/")
		sl, srest, smore := strings.Cut(sub, "/")
		switch {
		case fl == "#":
			return true
		case sl == "#":
			// sub reaches every level below; only a '#' in f can cover that.
			return false
		case fl == "+":
			// '+' matches any one level, including another '+'.
		case fl != sl:
			return false
		}
		switch {
		case fmore && smore:
			f, sub = frest, srest
		case !fmore && !smore:
			return true
		case fmore && !smore:
			// "a/#" also matches "a".
			return frest == "#"
		default:
			return false
		}
	}
}
