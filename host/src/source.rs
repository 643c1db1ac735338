//! Where profiles come from. Embedders implement [`ProfileSource`] over their own store; the
//! host ships [`FileSource`] for CSV and JSON Lines files.
//!
//! A run streams profiles: the file source keeps only a 16-byte hash of each chosen segment
//! member's id in memory, never the profiles themselves.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One profile: its id and its values, in the order of [`ProfileSource::columns`].
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: String,
    pub values: Vec<Option<String>>,
}

/// The profiles of the chosen segments, each once, with their number when known up front.
pub struct ProfileStream {
    /// How many profiles the stream will yield, if the source knows before streaming.
    pub total: Option<u64>,
    pub profiles: Box<dyn Iterator<Item = Result<Profile>> + Send>,
}

/// A store of profiles and segment memberships.
pub trait ProfileSource: Send + Sync {
    /// Names of the fields every profile carries (the id column included).
    fn columns(&self) -> Result<Vec<String>>;
    /// The segments the source knows, with their member counts.
    fn segments(&self) -> Result<BTreeMap<String, u64>>;
    /// Streams the profiles that belong to any of `segments`, each profile once.
    fn profiles(&self, segments: &[String]) -> Result<ProfileStream>;
}

/// Profiles and memberships in files: CSV (with a header row) or JSON Lines (`.jsonl`/`.ndjson`,
/// one object a line). Memberships have a `profile_id` and a `segment` field.
#[derive(Debug, Clone)]
pub struct FileSource {
    profiles: PathBuf,
    memberships: PathBuf,
    id_column: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Csv,
    JsonLines,
}

fn format_of(path: &Path) -> Result<Format> {
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

/// A 128-bit hash of a key (a profile id, a normalised email), so a run can remember what it
/// has seen without keeping the values: collisions are out of reach even for billions of keys.
pub(crate) fn hash128(key: &str) -> u128 {
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        key.hash(&mut h);
        h.finish() as u128
    };
    (half(1) << 64) | half(2)
}

impl FileSource {
    /// A source reading `profiles` (whose `id_column` holds the profile id) and `memberships`.
    pub fn new(
        profiles: impl Into<PathBuf>,
        memberships: impl Into<PathBuf>,
        id_column: &str,
    ) -> Result<FileSource> {
        let source = FileSource {
            profiles: profiles.into(),
            memberships: memberships.into(),
            id_column: id_column.to_string(),
        };
        format_of(&source.profiles)?;
        format_of(&source.memberships)?;
        Ok(source)
    }

    /// Calls `each(profile_id, segment)` for every membership row.
    fn scan_memberships(&self, mut each: impl FnMut(&str, &str)) -> Result<()> {
        let path = &self.memberships;
        let at = |line: u64| format!("{} line {line}", path.display());
        match format_of(path)? {
            Format::Csv => {
                let mut reader = csv::Reader::from_reader(open(path, "memberships")?);
                let headers = reader.headers().with_context(|| at(1))?.clone();
                let col = |name: &str| {
                    headers
                        .iter()
                        .position(|h| h.trim() == name)
                        .with_context(|| {
                            format!(
                                "{}: no `{name}` column (the header has: {})",
                                path.display(),
                                headers.iter().collect::<Vec<_>>().join(", ")
                            )
                        })
                };
                let (id, segment) = (col("profile_id")?, col("segment")?);
                let mut record = csv::StringRecord::new();
                while reader
                    .read_record(&mut record)
                    .with_context(|| at(reader.position().line()))?
                {
                    each(
                        record.get(id).unwrap_or("").trim(),
                        record.get(segment).unwrap_or("").trim(),
                    );
                }
            }
            Format::JsonLines => {
                for (n, line) in open(path, "memberships")?.lines().enumerate() {
                    let line = line.with_context(|| at(n as u64 + 1))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let row: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(&line).with_context(|| at(n as u64 + 1))?;
                    let field = |k: &str| {
                        row.get(k)
                            .and_then(value_text)
                            .with_context(|| format!("{}: no `{k}`", at(n as u64 + 1)))
                    };
                    each(field("profile_id")?.trim(), field("segment")?.trim());
                }
            }
        }
        Ok(())
    }
}

/// A JSON value as profile text: strings as they are, numbers and booleans printed, null absent.
fn value_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl ProfileSource for FileSource {
    fn columns(&self) -> Result<Vec<String>> {
        let path = &self.profiles;
        let columns: Vec<String> = match format_of(path)? {
            Format::Csv => {
                let mut reader = csv::Reader::from_reader(open(path, "profile")?);
                let headers = reader
                    .headers()
                    .with_context(|| format!("{} line 1", path.display()))?;
                headers.iter().map(|h| h.trim().to_string()).collect()
            }
            Format::JsonLines => {
                let mut first = String::new();
                let mut reader = open(path, "profile")?;
                while first.trim().is_empty() {
                    first.clear();
                    if reader.read_line(&mut first)? == 0 {
                        return Ok(vec![]);
                    }
                }
                let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&first)
                    .with_context(|| format!("{}: first record", path.display()))?;
                row.keys().cloned().collect()
            }
        };
        if !columns.contains(&self.id_column) {
            bail!(
                "{}: no `{}` id column (it has: {})",
                path.display(),
                self.id_column,
                columns.join(", ")
            );
        }
        Ok(columns)
    }

    fn segments(&self) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        self.scan_memberships(|_, segment| *counts.entry(segment.to_string()).or_insert(0) += 1)?;
        Ok(counts)
    }

    fn profiles(&self, segments: &[String]) -> Result<ProfileStream> {
        let columns = self.columns()?;
        let id_index = columns
            .iter()
            .position(|c| *c == self.id_column)
            .expect("checked by columns()");
        let mut members = HashSet::new();
        self.scan_memberships(|id, segment| {
            if segments.iter().any(|s| s == segment) {
                members.insert(hash128(id));
            }
        })?;
        let total = Some(members.len() as u64);
        let path = self.profiles.clone();
        let profiles: Box<dyn Iterator<Item = Result<Profile>> + Send> = match format_of(&path)? {
            Format::Csv => {
                let mut reader = csv::Reader::from_reader(open(&path, "profile")?);
                reader.headers()?;
                let mut record = csv::StringRecord::new();
                Box::new(std::iter::from_fn(move || {
                    loop {
                        match reader.read_record(&mut record) {
                            Ok(false) => return None,
                            Err(e) => {
                                return Some(Err(anyhow::Error::new(e).context(format!(
                                    "{} line {}",
                                    path.display(),
                                    reader.position().line()
                                ))));
                            }
                            Ok(true) => {
                                let id = record.get(id_index).unwrap_or("").trim();
                                if !members.remove(&hash128(id)) {
                                    continue;
                                }
                                let values = (0..columns.len())
                                    .map(|i| {
                                        record.get(i).map(str::to_string).filter(|v| !v.is_empty())
                                    })
                                    .collect();
                                return Some(Ok(Profile {
                                    id: id.to_string(),
                                    values,
                                }));
                            }
                        }
                    }
                }))
            }
            Format::JsonLines => {
                let mut lines = open(&path, "profile")?.lines().enumerate();
                let id_column = self.id_column.clone();
                Box::new(std::iter::from_fn(move || {
                    loop {
                        let (n, line) = lines.next()?;
                        let at = || format!("{} line {}", path.display(), n + 1);
                        let line = match line {
                            Ok(line) if line.trim().is_empty() => continue,
                            Ok(line) => line,
                            Err(e) => return Some(Err(anyhow::Error::new(e).context(at()))),
                        };
                        let row: serde_json::Map<String, serde_json::Value> =
                            match serde_json::from_str(&line) {
                                Ok(row) => row,
                                Err(e) => return Some(Err(anyhow::Error::new(e).context(at()))),
                            };
                        let id = row.get(&id_column).and_then(value_text).unwrap_or_default();
                        if !members.remove(&hash128(id.trim())) {
                            continue;
                        }
                        let values = columns
                            .iter()
                            .map(|c| row.get(c).and_then(value_text))
                            .collect();
                        return Some(Ok(Profile {
                            id: id.trim().to_string(),
                            values,
                        }));
                    }
                }))
            }
        };
        Ok(ProfileStream { total, profiles })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn csv_and_json_lines_stream_only_segment_members_once() {
        let dir = std::env::temp_dir().join(format!("source-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = write(
            &dir,
            "p.csv",
            "id,email,first\n1,a@x.io,Ann\n2,b@x.io,\n3,c@x.io,Cy\n",
        );
        let jsonl = write(
            &dir,
            "p.jsonl",
            "{\"id\":\"1\",\"email\":\"a@x.io\",\"first\":\"Ann\"}\n\n{\"id\":2,\"email\":\"b@x.io\",\"first\":null}\n{\"id\":\"3\",\"email\":\"c@x.io\",\"first\":\"Cy\"}\n",
        );
        let members = write(
            &dir,
            "m.csv",
            "profile_id,segment\n1,vip\n3,news\n1,news\n2,other\n",
        );
        for profiles in [csv, jsonl] {
            let source = FileSource::new(&profiles, &members, "id").unwrap();
            assert_eq!(source.columns().unwrap(), ["id", "email", "first"]);
            assert_eq!(
                source.segments().unwrap(),
                BTreeMap::from([("news".into(), 2), ("other".into(), 1), ("vip".into(), 1)])
            );
            let stream = source.profiles(&["vip".into(), "news".into()]).unwrap();
            assert_eq!(stream.total, Some(2));
            let got: Vec<Profile> = stream.profiles.collect::<Result<_>>().unwrap();
            assert_eq!(
                got.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
                ["1", "3"]
            );
            assert_eq!(got[0].values[2].as_deref(), Some("Ann"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsupported_or_missing_files_are_named_in_the_error() {
        let err = FileSource::new("p.xlsx", "m.csv", "id").unwrap_err();
        assert!(
            err.to_string().contains("p.xlsx: unsupported file type"),
            "{err}"
        );
        let source = FileSource::new("/nonexistent/p.csv", "/nonexistent/m.csv", "id").unwrap();
        let err = format!("{:#}", source.columns().unwrap_err());
        assert!(
            err.contains("cannot read the profile file /nonexistent/p.csv"),
            "{err}"
        );
    }
}
