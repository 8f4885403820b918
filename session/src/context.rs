//! What was on screen before a capture: the session's distinct
//! active-window titles of the last `context_minutes` (the site policy's
//! key, default 60), with their process and when each was first and last
//! in front.
//!
//! Guarantee: the buffer lives in the helper's memory only (nothing is
//! written to disk, nothing is sent except inside a capture) and is
//! bounded three ways: by age (an entry last in front longer ago than the
//! window is dropped), by count (`MAX_CONTEXT_ENTRIES`, oldest dropped
//! first) and by bytes (`MAX_CONTEXT_BYTES` of titles and process names,
//! oldest dropped first; one title is cut to `MAX_TITLE_BYTES`). A window
//! of 0 minutes keeps nothing at all. Time is a parameter (Unix
//! milliseconds), so tests set it.

use std::collections::VecDeque;

use hallmonitor_capture_protocol::{ContextWindow, MAX_CONTEXT_ENTRIES};

/// Bytes of titles and process names the buffer holds at most.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;
/// One title is cut to this many bytes (at a character boundary).
pub const MAX_TITLE_BYTES: usize = 1024;
/// One process name is cut to this many bytes.
pub const MAX_PROCESS_BYTES: usize = 64;

/// The session's recent window titles, the one in front last.
#[derive(Debug, Default)]
pub struct ContextBuffer {
    entries: VecDeque<ContextWindow>,
    bytes: usize,
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn size(entry: &ContextWindow) -> usize {
    entry.title.len() + entry.process_name.len()
}

impl ContextBuffer {
    /// `title` (of `process_name`) came to the front at `now_ms`; the
    /// window in front before it was there until then. Keeps nothing when
    /// `minutes` is 0.
    pub fn observe(&mut self, title: &str, process_name: &str, now_ms: i64, minutes: u32) {
        if minutes == 0 {
            self.clear();
            return;
        }
        if let Some(front) = self.entries.back_mut() {
            front.last_seen_ms = front.last_seen_ms.max(now_ms);
        }
        let title = cut(title, MAX_TITLE_BYTES);
        let process_name = cut(process_name, MAX_PROCESS_BYTES);
        let first_seen_ms = match self
            .entries
            .iter()
            .position(|e| e.title == title && e.process_name == process_name)
        {
            Some(at) => {
                let earlier = self.entries.remove(at).expect("the position exists");
                self.bytes -= size(&earlier);
                earlier.first_seen_ms
            }
            None => now_ms,
        };
        let entry = ContextWindow {
            title,
            process_name,
            first_seen_ms,
            last_seen_ms: now_ms,
        };
        self.bytes += size(&entry);
        self.entries.push_back(entry);
        self.evict(now_ms, minutes);
    }

    /// The titles in front before the current one within the last
    /// `minutes` at `now_ms`, oldest first (the current one is the
    /// capture's own title).
    pub fn before_front(&mut self, now_ms: i64, minutes: u32) -> Vec<ContextWindow> {
        if minutes == 0 {
            self.clear();
            return Vec::new();
        }
        self.evict(now_ms, minutes);
        let earlier = self.entries.len().saturating_sub(1);
        self.entries.iter().take(earlier).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of titles and process names held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drops entries last in front before the window, then the oldest
    /// beyond the count and byte limits. The window in front stays.
    fn evict(&mut self, now_ms: i64, minutes: u32) {
        let since = now_ms.saturating_sub(i64::from(minutes) * 60_000);
        while self.entries.len() > 1
            && (self.entries[0].last_seen_ms < since
                || self.entries.len() > MAX_CONTEXT_ENTRIES
                || self.bytes > MAX_CONTEXT_BYTES)
        {
            let oldest = self.entries.pop_front().expect("more than one entry");
            self.bytes -= size(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    fn titles(context: &[ContextWindow]) -> Vec<&str> {
        context.iter().map(|e| e.title.as_str()).collect()
    }

    #[test]
    fn distinct_titles_oldest_first_without_the_one_in_front() {
        let mut buffer = ContextBuffer::default();
        buffer.observe("Maths homework", "firefox", 0, 60);
        buffer.observe("Minecraft", "java", MINUTE, 60);
        buffer.observe("Maths homework", "firefox", 2 * MINUTE, 60);
        buffer.observe("Search: something", "firefox", 3 * MINUTE, 60);
        let context = buffer.before_front(3 * MINUTE, 60);
        assert_eq!(titles(&context), ["Minecraft", "Maths homework"]);
        // Seen again: first seen stays, last seen is when it left the front.
        assert_eq!(context[1].first_seen_ms, 0);
        assert_eq!(context[1].last_seen_ms, 3 * MINUTE);
        assert_eq!(context[0].last_seen_ms, 2 * MINUTE);
    }

    #[test]
    fn eviction_by_age() {
        let mut buffer = ContextBuffer::default();
        buffer.observe("old", "a", 0, 10);
        buffer.observe("recent", "a", 5 * MINUTE, 10);
        buffer.observe("now", "a", 12 * MINUTE, 10);
        // "old" left the front at 5 min; at 16 min that is 11 min ago.
        assert_eq!(titles(&buffer.before_front(16 * MINUTE, 10)), ["recent"]);
        // The window in front is never evicted, however long it stays.
        assert_eq!(
            titles(&buffer.before_front(600 * MINUTE, 10)),
            [] as [&str; 0]
        );
        assert_eq!(buffer.len(), 1);
    }

    #[test]
    fn eviction_by_count() {
        let mut buffer = ContextBuffer::default();
        for n in 0..MAX_CONTEXT_ENTRIES + 50 {
            buffer.observe(&format!("title {n}"), "a", n as i64, 60);
        }
        assert_eq!(buffer.len(), MAX_CONTEXT_ENTRIES);
        let context = buffer.before_front(1_000, 60);
        assert_eq!(context.len(), MAX_CONTEXT_ENTRIES - 1);
        assert_eq!(context[0].title, "title 50");
    }

    #[test]
    fn eviction_by_bytes_and_long_titles_cut() {
        let mut buffer = ContextBuffer::default();
        let long = "é".repeat(MAX_TITLE_BYTES);
        for n in 0..100 {
            buffer.observe(&format!("{n} {long}"), "a", n, 60);
        }
        assert!(buffer.bytes() <= MAX_CONTEXT_BYTES, "{}", buffer.bytes());
        assert!(buffer.len() < 100 && buffer.len() >= 60, "{}", buffer.len());
        let context = buffer.before_front(100, 60);
        assert!(context.iter().all(|e| e.title.len() <= MAX_TITLE_BYTES));
        assert_eq!(
            titles(&context).last().unwrap().split(' ').next(),
            Some("98")
        );
    }

    #[test]
    fn zero_minutes_keeps_nothing() {
        let mut buffer = ContextBuffer::default();
        buffer.observe("a", "p", 0, 60);
        buffer.observe("b", "p", 1, 60);
        buffer.observe("c", "p", 2, 0);
        assert!(buffer.is_empty());
        buffer.observe("d", "p", 3, 60);
        buffer.observe("e", "p", 4, 60);
        assert_eq!(buffer.before_front(5, 0), []);
        assert!(buffer.is_empty());
    }
}
