// Package lru is a small least-recently-used cache with a fixed capacity.
package lru

import "container/list"

// Cache keeps at most its capacity of entries, dropping the least recently
// used. It is not safe for concurrent use; callers hold their own lock.
type Cache[K comparable, V any] struct {
	cap   int
	order *list.List // front: most recently used
	items map[K]*list.Element
}

type entry[K comparable, V any] struct {
	key K
	val V
}

// New returns a cache holding at most capacity entries (at least one).
func New[K comparable, V any](capacity int) *Cache[K, V] {
	return &Cache[K, V]{cap: max(capacity, 1), order: list.New(), items: map[K]*list.Element{}}
}

// Get returns the value for key and marks it recently used.
func (c *Cache[K, V]) Get(key K) (V, bool) {
	if el, ok := c.items[key]; ok {
		c.order.MoveToFront(el)
		return el.Value.(*entry[K, V]).val, true
	}
	var zero V
	return zero, false
}

// Add sets the value for key, dropping the least recently used entry if the
// cache is full.
func (c *Cache[K, V]) Add(key K, val V) {
	if el, ok := c.items[key]; ok {
		el.Value.(*entry[K, V]).val = val
		c.order.MoveToFront(el)
		return
	}
	c.items[key] = c.order.PushFront(&entry[K, V]{key: key, val: val})
	if c.order.Len() > c.cap {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.items, oldest.Value.(*entry[K, V]).key)
	}
}

// Remove drops key.
func (c *Cache[K, V]) Remove(key K) {
	if el, ok := c.items[key]; ok {
		c.order.Remove(el)
		delete(c.items, key)
	}
}

// RemoveIf drops every entry whose key satisfies drop.
func (c *Cache[K, V]) RemoveIf(drop func(K) bool) {
	for k, el := range c.items {
		if drop(k) {
			c.order.Remove(el)
			delete(c.items, k)
		}
	}
}

// Len is the number of entries.
func (c *Cache[K, V]) Len() int { return len(c.items) }
