package lru

import "testing"

func TestCache(t *testing.T) {
	c := New[string, int](2)
	c.Add("a", 1)
	c.Add("b", 2)
	if v, ok := c.Get("a"); !ok || v != 1 {
		t.Fatalf("Get(a) = %d, %v", v, ok)
	}
	c.Add("c", 3) // drops b, the least recently used
	if _, ok := c.Get("b"); ok {
		t.Error("b survived past capacity")
	}
	if v, _ := c.Get("a"); v != 1 {
		t.Error("a was dropped though recently used")
	}
	c.Add("a", 10)
	if v, _ := c.Get("a"); v != 10 || c.Len() != 2 {
		t.Errorf("update: got %d, len %d", v, c.Len())
	}
	c.RemoveIf(func(k string) bool { return k == "c" })
	c.Remove("a")
	if c.Len() != 0 {
		t.Errorf("len %d after removing all", c.Len())
	}
}
