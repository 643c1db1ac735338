//! Reading a CSV or JSON Lines file record by record without ever stopping at a bad one: each
//! record comes with the line it starts on and, when it cannot be read as the file's columns
//! say, why. Only a failure to read the file itself is an error.
//!
//! CSV is split here, line by line, rather than by a CSV library: a record's line must be the
//! line an operator's editor shows (a quoted newline starts a new line), and a quote that never
//! closes must cost one record, not the rest of the file.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::text::{MAX_LABEL_CHARS, clean};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Lines a quoted field may span before its quote counts as never closing.
const MAX_RECORD_LINES: usize = 1000;
/// Bytes a record may hold before its quote counts as never closing.
const MAX_RECORD_BYTES: usize = 1 << 20;
/// Bytes one physical line may hold: a longer one is skipped as unreadable without being held
/// (a file with no line ends, or with lone-CR ones, is not read into memory whole).
const MAX_LINE_BYTES: usize = 16 << 20;
/// Why a line over [`MAX_LINE_BYTES`] was skipped.
const LINE_TOO_LONG: &str = "the line is longer than 16 MiB";

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Format {
    Csv,
    JsonLines,
}

pub(super) fn format_of(path: &Path) -> Result<Format> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => Ok(Format::Csv),
        Some("jsonl" | "ndjson") => Ok(Format::JsonLines),
        _ => bail!(
            "{}: unsupported file type; use .csv (with a header row) or .jsonl (JSON Lines)",
            path.display()
        ),
    }
}

fn open(path: &Path, what: &str) -> Result<BufReader<File>> {
    let file = File::open(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    Ok(BufReader::with_capacity(1 << 16, file))
}

/// One record of a file.
#[derive(Debug)]
pub(super) struct Record {
    /// The line the record starts on (1-based; a CSV header is line 1).
    pub line: u64,
    /// The values in the order of the file's columns; one that could not be read is `None`.
    pub values: Vec<Option<String>>,
    /// Why the record cannot be used as it stands, if it cannot.
    pub problem: Option<String>,
}

/// The records of a file, after its columns.
pub(super) struct Records {
    path: PathBuf,
    columns: Vec<String>,
    lines: Lines,
    format: Format,
    /// A JSON Lines file's columns by name.
    index: HashMap<String, usize>,
}

impl Records {
    /// Opens `path`. A CSV file's columns are its header; a JSON Lines file's are
    /// `json_columns` (see [`json_columns`]), which the caller computes once.
    pub(super) fn open(
        path: &Path,
        what: &str,
        json_columns: impl FnOnce() -> Result<Vec<String>>,
    ) -> Result<Records> {
        let format = format_of(path)?;
        let mut lines = Lines::new(open(path, what)?);
        let columns = match format {
            Format::Csv => match lines
                .next_csv()
                .with_context(|| format!("{} line 1", path.display()))?
            {
                Some(CsvRecord {
                    line,
                    problem: Some(why),
                    ..
                }) => bail!(
                    "{} line {line}: the header cannot be read: {why}",
                    path.display()
                ),
                Some(header) => header_names(path, header.line, &header.fields)?,
                None => vec![],
            },
            Format::JsonLines => json_columns()?,
        };
        let index = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i))
            .collect();
        Ok(Records {
            path: path.to_path_buf(),
            columns,
            lines,
            format,
            index,
        })
    }

    pub(super) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// A CSV record as values, with what is wrong with it.
    fn csv_record(&self, record: CsvRecord) -> Record {
        let CsvRecord {
            line,
            fields,
            problem,
        } = record;
        let width = self.columns.len();
        let mut problems: Vec<String> = problem.into_iter().collect();
        if problems.is_empty() && fields.len() != width {
            problems.push(format!(
                "{} fields where the header has {width}",
                fields.len()
            ));
        }
        let mut values: Vec<Option<String>> = Vec::with_capacity(width);
        for (i, field) in fields.into_iter().take(width).enumerate() {
            match String::from_utf8(field) {
                Ok(text) => values.push(Some(text).filter(|t| !t.is_empty())),
                Err(e) => {
                    let byte = e.as_bytes()[e.utf8_error().valid_up_to()];
                    problems.push(format!(
                        "column `{}` is not UTF-8 (byte 0x{byte:02X})",
                        clean(&self.columns[i], MAX_LABEL_CHARS)
                    ));
                    values.push(None);
                }
            }
        }
        values.resize(width, None);
        Record {
            line,
            values,
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }

    /// A JSON Lines record as values, or why it cannot be read.
    fn json_record(&self, line: u64, bytes: &[u8]) -> Record {
        let mut values = vec![None; self.columns.len()];
        let problem = match json_object(bytes) {
            Ok(object) => {
                for (key, value) in object {
                    if let Some(&i) = self.index.get(&key) {
                        values[i] = value_text(&value);
                    }
                }
                None
            }
            Err(why) => Some(why),
        };
        Record {
            line,
            values,
            problem,
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        let read = match self.format {
            Format::Csv => self
                .lines
                .next_csv()
                .map(|record| record.map(|r| self.csv_record(r))),
            Format::JsonLines => loop {
                match self.lines.next_line() {
                    Ok(Some(l)) if l.too_long => {
                        break Ok(Some(Record {
                            line: l.number,
                            values: vec![None; self.columns.len()],
                            problem: Some(LINE_TOO_LONG.into()),
                        }));
                    }
                    Ok(Some(l)) if l.bytes.iter().all(u8::is_ascii_whitespace) => {}
                    Ok(Some(l)) => break Ok(Some(self.json_record(l.number, &l.bytes))),
                    Ok(None) => break Ok(None),
                    Err(e) => break Err(e),
                }
            },
        };
        match read {
            Ok(record) => record.map(Ok),
            Err(e) => {
                let at = format!("{} after line {}", self.path.display(), self.lines.read);
                Some(Err(anyhow::Error::new(e).context(at)))
            }
        }
    }
}

/// The header's column names: UTF-8, trimmed, none empty or repeated, or the file is refused
/// as a whole.
fn header_names(path: &Path, line: u64, header: &[Vec<u8>]) -> Result<Vec<String>> {
    if let Some(first) = header.first()
        && looks_like_utf16(first)
    {
        bail!(
            "{} looks like UTF-16 (it starts with a UTF-16 byte-order mark, or its text is full of zero bytes); save it as UTF-8",
            path.display()
        );
    }
    let mut names: Vec<String> = Vec::with_capacity(header.len());
    for (i, field) in header.iter().enumerate() {
        let at = || {
            format!(
                "{} line {line}: the header's column {}",
                path.display(),
                i + 1
            )
        };
        if field.contains(&b'\r') {
            bail!(
                "{} line {line}: its lines end with a lone CR (as old Mac files do); save the file with LF or CRLF line ends",
                path.display()
            );
        }
        let Ok(name) = std::str::from_utf8(field) else {
            bail!("{} is not UTF-8", at());
        };
        let name = name.trim();
        if name.is_empty() {
            bail!("{} has no name", at());
        }
        if names.iter().any(|n| n == name) {
            bail!(
                "{}: the header names `{}` twice",
                path.display(),
                clean(name, MAX_LABEL_CHARS)
            );
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// A CSV record: its fields, and why it could not be split into fields properly (then the
/// fields are those of its first line, for what they are worth).
struct CsvRecord {
    line: u64,
    fields: Vec<Vec<u8>>,
    problem: Option<String>,
}

/// The physical lines of a file, numbered, a byte-order mark dropped.
struct Lines {
    reader: BufReader<File>,
    /// Lines read from the file so far.
    read: u64,
    /// Lines read but given back, to read again (after a quote that never closed).
    pending: VecDeque<Line>,
}

/// One physical line, with its line end.
struct Line {
    number: u64,
    bytes: Vec<u8>,
    /// Longer than [`MAX_LINE_BYTES`]: `bytes` holds its start only, the rest was passed over.
    too_long: bool,
}

impl Lines {
    fn new(reader: BufReader<File>) -> Lines {
        Lines {
            reader,
            read: 0,
            pending: VecDeque::new(),
        }
    }

    fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        if let Some(line) = self.pending.pop_front() {
            return Ok(Some(line));
        }
        let mut bytes = Vec::new();
        let mut too_long = false;
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                break;
            }
            let (end, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(bytes.len());
            if end > room {
                too_long = true;
            }
            bytes.extend_from_slice(&available[..end.min(room)]);
            self.reader.consume(end);
            if done {
                break;
            }
        }
        if bytes.is_empty() && !too_long {
            return Ok(None);
        }
        self.read += 1;
        if self.read == 1
            && let Some(rest) = bytes.strip_prefix(BOM)
        {
            bytes = rest.to_vec();
        }
        Ok(Some(Line {
            number: self.read,
            bytes,
            too_long,
        }))
    }

    /// The next CSV record, its lines joined where a quoted field spans them; blank lines are
    /// passed over.
    fn next_csv(&mut self) -> std::io::Result<Option<CsvRecord>> {
        let first = loop {
            match self.next_line()? {
                None => return Ok(None),
                Some(l) if l.bytes.iter().all(u8::is_ascii_whitespace) && !l.too_long => {}
                Some(first) => break first,
            }
        };
        let line = first.number;
        if first.too_long {
            return Ok(Some(CsvRecord {
                line,
                fields: vec![],
                problem: Some(LINE_TOO_LONG.into()),
            }));
        }
        let first = first.bytes;
        let mut split = Splitter::default();
        let (mut size, mut more): (usize, Vec<Line>) = (first.len(), vec![]);
        let mut complete = split.feed(&first);
        while !complete {
            let capped = more.len() >= MAX_RECORD_LINES || size > MAX_RECORD_BYTES;
            let next = if capped { None } else { self.next_line()? };
            let Some(next) = next else {
                let within = if capped {
                    format!("within {MAX_RECORD_LINES} lines or 1 MiB")
                } else {
                    "before the end of the file".to_string()
                };
                // The lines it swallowed are read again, as the rows they are.
                for taken in more.into_iter().rev() {
                    self.pending.push_front(taken);
                }
                let mut alone = Splitter::default();
                alone.feed(&first);
                alone.fields.push(alone.field);
                return Ok(Some(CsvRecord {
                    line,
                    fields: alone.fields,
                    problem: Some(format!(
                        "a quote opened on this line never closes {within}; reading resumes on line {}",
                        line + 1
                    )),
                }));
            };
            size += next.bytes.len();
            if next.too_long {
                // Counts as past the cap: the quote fails, and the line is read again alone.
                size = usize::MAX;
                more.push(next);
                continue;
            }
            complete = split.feed(&next.bytes);
            more.push(next);
        }
        Ok(Some(CsvRecord {
            line,
            fields: split.fields,
            problem: None,
        }))
    }
}

/// Splits CSV lines into fields as RFC 4180 says: a field that starts with a quote runs to
/// the quote that closes it (`""` inside it is one quote, and line breaks are kept); a quote
/// anywhere else is an ordinary character.
#[derive(Default)]
struct Splitter {
    fields: Vec<Vec<u8>>,
    field: Vec<u8>,
    state: SplitState,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum SplitState {
    #[default]
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: its end, or the first of `""`.
    QuoteInQuoted,
}

impl Splitter {
    /// Feeds one physical line (with its line ending); true once the record is complete.
    fn feed(&mut self, line: &[u8]) -> bool {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        for &b in content {
            self.state = match (self.state, b) {
                (SplitState::FieldStart, b'"') => SplitState::Quoted,
                (SplitState::Quoted, b'"') => SplitState::QuoteInQuoted,
                (SplitState::Quoted, _) => {
                    self.field.push(b);
                    SplitState::Quoted
                }
                (SplitState::QuoteInQuoted, b'"') => {
                    self.field.push(b'"');
                    SplitState::Quoted
                }
                (_, b',') => {
                    self.fields.push(std::mem::take(&mut self.field));
                    SplitState::FieldStart
                }
                (_, _) => {
                    self.field.push(b);
                    SplitState::Unquoted
                }
            };
        }
        if self.state == SplitState::Quoted {
            // The line break belongs to the quoted value.
            self.field.extend_from_slice(&line[content.len()..]);
            return false;
        }
        self.fields.push(std::mem::take(&mut self.field));
        self.state = SplitState::FieldStart;
        true
    }
}

/// Whether text is UTF-16 rather than UTF-8: a UTF-16 byte-order mark, or zero bytes
/// (which UTF-16 has in every other byte of Latin text, and UTF-8 text never has).
fn looks_like_utf16(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) || bytes.contains(&0)
}

/// A JSON Lines record as an object, or why it is not one.
fn json_object(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    // Without its line ending, so an error's column is on the record's own line.
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if looks_like_utf16(bytes) {
        return Err(
            "looks like UTF-16 (a UTF-16 byte-order mark, or zero bytes), not UTF-8: save the file as UTF-8".into(),
        );
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 (byte 0x{:02X} at column {})",
            bytes[e.valid_up_to()],
            e.valid_up_to() + 1
        )
    })?;
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!(
            "a JSON {} where a record must be an object",
            json_type(&other)
        )),
        Err(e) => {
            // serde_json says where as "at line 1 column N": the line is the record's own.
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or("");
            Err(format!(
                "not valid JSON ({message} at column {})",
                e.column()
            ))
        }
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// A JSON value as profile text: strings as they are, numbers and booleans printed, null absent.
pub(super) fn value_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()).filter(|s| !s.is_empty()),
        other => Some(other.to_string()),
    }
}

/// The columns of a JSON Lines file: the keys of all its records, in the order they first
/// appear. Records that are not JSON objects are passed over (runs report them).
pub(super) fn json_columns(path: &Path, what: &str) -> Result<Vec<String>> {
    let mut lines = Lines::new(open(path, what)?);
    let (mut columns, mut known) = (Vec::new(), std::collections::HashSet::new());
    while let Some(line) = lines
        .next_line()
        .with_context(|| format!("{} line {}", path.display(), lines.read + 1))?
    {
        if line.too_long {
            continue;
        }
        let Ok(keys) = serde_json::from_slice::<Keys>(&line.bytes) else {
            continue;
        };
        for key in keys.0 {
            if known.insert(key.clone()) {
                columns.push(key);
            }
        }
    }
    Ok(columns)
}

/// The keys of a JSON object, its values skipped unread.
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Keys, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = vec![];
                while let Some((key, serde::de::IgnoredAny)) = map.next_entry::<String, _>()? {
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}
