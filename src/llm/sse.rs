//! Server-sent events decoding. Network chunks do not respect event or even line boundaries, so
//! bytes are reassembled into lines and lines into events. Memory is bounded: an oversized line
//! is dropped (and counted) rather than buffered without limit.

/// One decoded event: its `event:` name, if any, and its `data:` lines joined by `\n`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    pending: SseEvent,
    has_data: bool,
    max_line_bytes: usize,
    /// The current line outgrew the limit and is being skipped up to its end.
    skipping: bool,
    pub dropped_lines: u64,
}

impl SseDecoder {
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            pending: SseEvent::default(),
            has_data: false,
            max_line_bytes,
            skipping: false,
            dropped_lines: 0,
        }
    }

    /// Feeds a chunk, calling `on_event` for every event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_event: impl FnMut(SseEvent)) {
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.push(&chunk[..i]);
                    chunk = &chunk[i + 1..];
                    if self.skipping {
                        self.skipping = false;
                        self.line.clear();
                        continue;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.on_line(&line, &mut on_event);
                    line.clear();
                    self.line = line;
                }
                None => {
                    self.push(chunk);
                    chunk = &[];
                }
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        if self.line.len() + bytes.len() > self.max_line_bytes {
            self.skipping = true;
            self.dropped_lines += 1;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn on_line(&mut self, line: &[u8], on_event: &mut impl FnMut(SseEvent)) {
        if line.is_empty() {
            if self.has_data {
                self.has_data = false;
                on_event(std::mem::take(&mut self.pending));
            } else {
                self.pending = SseEvent::default();
            }
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.pending.event = Some(value.to_owned()),
            _ => {} // id, retry and comments do not matter here
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(input: &str, size: usize) -> Vec<SseEvent> {
        let mut d = SseDecoder::new(1 << 20);
        let mut out = Vec::new();
        for chunk in input.as_bytes().chunks(size) {
            d.feed(chunk, |e| out.push(e));
        }
        out
    }

    #[test]
    fn events_survive_any_chunking() {
        let input = "event: message_start\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
        for size in 1..input.len() {
            let events = decode_in_chunks(input, size);
            assert_eq!(events.len(), 3, "chunk size {size}");
            assert_eq!(events[0].event.as_deref(), Some("message_start"));
            assert_eq!(events[0].data, "{\"a\":1}");
            assert_eq!(events[1].data, "x\ny");
            assert_eq!(events[1].event, None);
            assert_eq!(events[2].data, "[DONE]");
        }
    }

    #[test]
    fn oversized_lines_are_dropped_not_buffered() {
        let mut d = SseDecoder::new(16);
        let mut out = Vec::new();
        d.feed(
            format!("data: {}\n\ndata: ok\n\n", "x".repeat(100)).as_bytes(),
            |e| out.push(e),
        );
        assert_eq!(d.dropped_lines, 1);
        assert_eq!(
            out,
            vec![SseEvent {
                event: None,
                data: "ok".into()
            }]
        );
    }
}
