//! Server-sent events as the streaming endpoints write them (`data: {json}` then a blank
//! line; the stream ends with `data: [DONE]`), and the reader clients run (WHATWG's event
//! stream parsing), which tests and the fuzz target hold the writer against.

/// `Content-Type` of an event stream.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// The data of the event that ends a completions or chat stream.
pub const DONE: &str = "[DONE]";

/// One event carrying `data`: a `data:` line per line of it (CR, LF and CRLF each end a line,
/// and the reader joins lines with LF), then a blank line.
pub fn event(data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 8);
    for line in lines(data) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// An event carrying a JSON value (serde_json escapes every control character, so it is one
/// `data:` line).
pub fn json_event(value: &serde_json::Value) -> String {
    event(&value.to_string())
}

/// Lines of `s` split at CRLF, LF or CR; an empty string is one empty line.
fn lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// The data of every event in `stream`, as a client reads them (the event stream
/// interpretation of the HTML standard: comments and fields other than `data` skipped, one
/// leading space of a value dropped, an event without data not dispatched, an unfinished last
/// event dropped).
pub fn read_events(stream: &str) -> Vec<String> {
    let stream = stream.strip_prefix('\u{feff}').unwrap_or(stream);
    let mut events = Vec::new();
    let mut data = String::new();
    let mut all: Vec<&str> = lines(stream).collect();
    // The text after the last line end is not a line (yet): empty, or an unfinished line.
    all.pop();
    for line in all {
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                events.push(std::mem::take(&mut data));
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            data.push_str(value);
            data.push('\n');
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn events_are_framed_and_read_back() {
        assert_eq!(event("[DONE]"), "data: [DONE]\n\n");
        assert_eq!(event("a\nb"), "data: a\ndata: b\n\n");
        assert_eq!(event(""), "data: \n\n");
        assert_eq!(
            read_events("data: x\n\n: comment\n\ndata:y\r\ndata:  z\r\rid: 3\n\ndata: cut"),
            vec!["x".to_string(), "y\n z".to_string()]
        );
        assert_eq!(read_events("event: ping\n\n"), Vec::<String>::new());
    }

    proptest! {
        /// Any text is one event whose data is the text with its line ends made LF.
        #[test]
        fn any_text_round_trips(s in "(\\PC|[\r\n\u{feff}:])*") {
            let framed = event(&s);
            let read = read_events(&framed);
            let want = s.replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(read, vec![want]);
        }

        /// Any JSON string is one `data:` line and reads back as the same value.
        #[test]
        fn json_is_one_line(s in "\\PC*|[\\x00-\\x1f\u{2028}\u{2029}\u{feff}]*") {
            let v = serde_json::json!({"content": s});
            let framed = json_event(&v);
            prop_assert_eq!(framed.matches('\n').count(), 2);
            let read = read_events(&framed);
            prop_assert_eq!(read.len(), 1);
            let back: serde_json::Value = serde_json::from_str(&read[0]).unwrap();
            prop_assert_eq!(back, v);
        }
    }
}
