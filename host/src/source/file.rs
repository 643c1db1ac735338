//! Profiles and memberships in files: CSV (with a header row) or JSON Lines (`.jsonl`/`.ndjson`,
//! one object a line). Memberships have a `profile_id` and a `segment` field.
//!
//! A run streams the profile file once, keeping only a 16-byte hash of each chosen member's id;
//! then it reads the memberships again for what it must report: memberships naming profiles the
//! file does not have, and membership rows that cannot be read.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use super::records::{Record, Records, format_of, json_columns};
use super::{Profile, ProfileSource, ProfileStream, Row, SkipReason, SkippedRow, hash128};
use crate::text::{MAX_LABEL_CHARS, clean};

/// Rows [`FileSource::sample_warnings`] reads from each file.
const SAMPLE_ROWS: usize = 1000;

#[derive(Debug, Clone)]
pub struct FileSource {
    profiles: PathBuf,
    memberships: PathBuf,
    id_column: String,
    /// A JSON Lines profile file's columns (a scan of the whole file), kept while the file is
    /// unchanged.
    json_columns: Arc<Mutex<Option<KnownColumns>>>,
}

/// Columns read from a file, and the file's stamp when they were.
type KnownColumns = (Stamp, Vec<String>);

/// What tells a file changed: its size and modification time.
type Stamp = (u64, Option<SystemTime>);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()))
}

/// Which file a path names and what it holds, as far as the file system tells: a file
/// replaced, truncated, grown or written to while a run reads it changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
    len: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl Identity {
    fn of(path: &Path) -> Result<Identity> {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Ok(Identity {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified_ns: ns(meta.mtime(), meta.mtime_nsec()),
            changed_ns: ns(meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// Fails, saying how, when `path` no longer holds what it held at `self`.
    fn still(&self, path: &Path) -> Result<()> {
        let now = Identity::of(path)?;
        if now == *self {
            return Ok(());
        }
        let how = if (now.device, now.inode) != (self.device, self.inode) {
            "was replaced by another file"
        } else if now.len < self.len {
            "was truncated"
        } else if now.len > self.len {
            "grew"
        } else {
            "was written to"
        };
        bail!(
            "{} {how} while the run read it: what was read may mix two versions, so the run stops; run it again once the file is complete (write a new file and rename it over the old one)",
            clean(&path.display().to_string(), MAX_LABEL_CHARS)
        )
    }
}

/// A membership row's profile id and segment.
struct Membership {
    id: Option<String>,
    segment: Option<String>,
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
            json_columns: Arc::default(),
        };
        format_of(&source.profiles)?;
        format_of(&source.memberships)?;
        Ok(source)
    }

    fn profile_records(&self) -> Result<Records> {
        Records::open(&self.profiles, "profile", || {
            let now = stamp(&self.profiles);
            let mut cached = self.json_columns.lock().unwrap_or_else(|p| p.into_inner());
            match &*cached {
                Some((at, columns)) if Some(*at) == now => Ok(columns.clone()),
                _ => {
                    let columns = json_columns(&self.profiles, "profile")?;
                    if let Some(now) = now {
                        *cached = Some((now, columns.clone()));
                    }
                    Ok(columns)
                }
            }
        })
    }

    /// The membership file's records, with where its `profile_id` and `segment` are.
    fn membership_records(&self) -> Result<(Records, usize, usize)> {
        let path = &self.memberships;
        let records = Records::open(path, "memberships", || json_columns(path, "memberships"))?;
        let col = |name: &str| {
            records
                .columns()
                .iter()
                .position(|h| h == name)
                .with_context(|| {
                    format!(
                        "{}: no `{name}` column (it has: {})",
                        path.display(),
                        records.columns().join(", ")
                    )
                })
        };
        let (id, segment) = (col("profile_id")?, col("segment")?);
        Ok((records, id, segment))
    }

    /// Calls `each` for every membership record.
    fn scan_memberships(&self, mut each: impl FnMut(&Record, Membership)) -> Result<()> {
        let (records, id, segment) = self.membership_records()?;
        for record in records {
            let record = record?;
            let text = |i: usize| {
                record.values[i]
                    .as_deref()
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
            };
            let membership = Membership {
                id: text(id),
                segment: text(segment),
            };
            each(&record, membership);
        }
        Ok(())
    }

    fn location(path: &Path, line: u64) -> String {
        let name = path.file_name().unwrap_or(path.as_os_str());
        format!(
            "{} line {line}",
            clean(&name.to_string_lossy(), MAX_LABEL_CHARS)
        )
    }
}

impl ProfileSource for FileSource {
    fn columns(&self) -> Result<Vec<String>> {
        let columns = self.profile_records()?.columns().to_vec();
        if !columns.contains(&self.id_column) {
            bail!(
                "{}: no `{}` id column (it has: {})",
                self.profiles.display(),
                self.id_column,
                columns.join(", ")
            );
        }
        Ok(columns)
    }

    fn segments(&self) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        self.scan_memberships(|record, m| {
            if let (None, Some(_), Some(segment)) = (&record.problem, &m.id, m.segment) {
                *counts.entry(segment).or_insert(0) += 1;
            }
        })?;
        Ok(counts)
    }

    fn profiles(&self, segments: &[String]) -> Result<ProfileStream> {
        // Both files as they are now: a run reads them three times in all (memberships,
        // profiles, memberships), and each must find the same files.
        let identities = [
            (self.profiles.clone(), Identity::of(&self.profiles)?),
            (self.memberships.clone(), Identity::of(&self.memberships)?),
        ];
        let columns = self.columns()?;
        let id_index = columns
            .iter()
            .position(|c| *c == self.id_column)
            .expect("checked by columns()");
        // Each chosen member's id hash, its lowest bit cleared; set once the profile is read.
        let mut members: HashSet<u128> = HashSet::new();
        let chosen = |segment: &Option<String>| {
            segment
                .as_ref()
                .is_some_and(|s| segments.iter().any(|c| c == s))
        };
        self.scan_memberships(|record, m| {
            if let (None, Some(id)) = (&record.problem, &m.id)
                && chosen(&m.segment)
            {
                members.insert(hash128(id) & !1);
            }
        })?;
        for (path, identity) in &identities {
            identity.still(path)?;
        }
        let total = Some(members.len() as u64);
        let rows = MemberRows {
            source: self.clone(),
            segments: segments.to_vec(),
            id_index,
            members,
            identities,
            phase: Phase::Profiles(self.profile_records()?),
        };
        Ok(ProfileStream {
            total,
            rows: Box::new(rows),
        })
    }

    fn sample_warnings(&self) -> Result<Vec<String>> {
        let mut warnings = vec![];
        let columns = self.columns()?;
        let id_index = columns.iter().position(|c| *c == self.id_column);
        let mut problems = Problems::default();
        let mut ids = HashSet::new();
        for record in self.profile_records()?.take(SAMPLE_ROWS) {
            let record = record?;
            let id = id_index.and_then(|i| record.values[i].as_deref().map(str::trim));
            let location = Self::location(&self.profiles, record.line);
            match (&record.problem, id) {
                (Some(problem), _) => problems.add(&location, problem),
                (None, None | Some("")) => problems.add(&location, "no profile id"),
                (None, Some(id)) if !ids.insert(hash128(id)) => problems.add(
                    &location,
                    &format!("repeats profile id `{}`", clean(id, MAX_LABEL_CHARS)),
                ),
                _ => {}
            }
        }
        warnings.extend(problems.warning(&self.profiles));
        let mut problems = Problems::default();
        let (records, _, _) = self.membership_records()?;
        for record in records.take(SAMPLE_ROWS) {
            let record = record?;
            if let Some(problem) = &record.problem {
                problems.add(&Self::location(&self.memberships, record.line), problem);
            }
        }
        warnings.extend(problems.warning(&self.memberships));
        Ok(warnings)
    }
}

/// Problems found in a sample of a file: how many, and the first few.
#[derive(Default)]
struct Problems {
    count: usize,
    examples: Vec<String>,
}

impl Problems {
    fn add(&mut self, location: &str, problem: &str) {
        self.count += 1;
        if self.examples.len() < 3 {
            self.examples.push(format!("{location}: {problem}"));
        }
    }

    fn warning(self, path: &Path) -> Option<String> {
        (self.count > 0).then(|| {
            format!(
                "{}: {} of the first {SAMPLE_ROWS} rows cannot be used and runs will skip them (e.g. {})",
                path.display(),
                self.count,
                self.examples.join("; ")
            )
        })
    }
}

/// The rows of the chosen segments: the profile file's, then what the memberships say that
/// the profiles do not have.
struct MemberRows {
    source: FileSource,
    segments: Vec<String>,
    id_index: usize,
    members: HashSet<u128>,
    /// Both files as they were when the run began reading.
    identities: [(PathBuf, Identity); 2],
    phase: Phase,
}

impl MemberRows {
    /// Fails when a file changed since the run began reading it.
    fn unchanged(&self) -> Result<()> {
        for (path, identity) in &self.identities {
            identity.still(path)?;
        }
        Ok(())
    }
}

enum Phase {
    Profiles(Records),
    Memberships(Records, usize, usize),
    Done,
}

impl MemberRows {
    /// The next row of the profile file that belongs to the segments (or might: a row whose id
    /// cannot be read is reported, since it cannot be ruled out).
    fn next_profile(&mut self, record: Record) -> Option<Row> {
        let location = || FileSource::location(&self.source.profiles, record.line);
        let id = record.values[self.id_index]
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty());
        let Some(id) = id else {
            let detail = match &record.problem {
                Some(problem) => problem.clone(),
                None => format!(
                    "no profile id (column `{}` is empty)",
                    clean(&self.source.id_column, MAX_LABEL_CHARS)
                ),
            };
            return Some(Row::Skipped(SkippedRow {
                profile_id: None,
                reason: SkipReason::Unreadable,
                location: location(),
                detail,
            }));
        };
        let hash = hash128(id) & !1;
        if self.members.remove(&hash) {
            self.members.insert(hash | 1);
            return Some(match record.problem {
                Some(detail) => Row::Skipped(SkippedRow {
                    profile_id: Some(id.to_string()),
                    reason: SkipReason::Unreadable,
                    location: location(),
                    detail,
                }),
                None => Row::Profile(Profile {
                    id: id.to_string(),
                    values: record.values,
                }),
            });
        }
        if self.members.contains(&(hash | 1)) {
            return Some(Row::Skipped(SkippedRow {
                profile_id: Some(id.to_string()),
                reason: SkipReason::RepeatedId,
                location: location(),
                detail: format!(
                    "repeats profile id `{}`; its first row is used",
                    clean(id, MAX_LABEL_CHARS)
                ),
            }));
        }
        None
    }

    /// The next membership row to report: one that cannot be read (unless it names another
    /// segment), or one naming a chosen member the profile file did not have.
    fn next_membership(&mut self, record: Record, id: usize, segment: usize) -> Option<Row> {
        let location = FileSource::location(&self.source.memberships, record.line);
        let text = |i: usize| {
            record.values[i]
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let (profile_id, named) = (text(id), text(segment));
        let chosen = named.is_some_and(|s| self.segments.iter().any(|c| c == s));
        if let Some(detail) = &record.problem {
            return (chosen || named.is_none()).then(|| {
                Row::Skipped(SkippedRow {
                    profile_id: profile_id.map(str::to_string),
                    reason: SkipReason::Unreadable,
                    location,
                    detail: format!("membership row: {detail}"),
                })
            });
        }
        if !chosen {
            return None;
        }
        let Some(profile_id) = profile_id else {
            return Some(Row::Skipped(SkippedRow {
                profile_id: None,
                reason: SkipReason::Unreadable,
                location,
                detail: "membership row: no profile id".into(),
            }));
        };
        let hash = hash128(profile_id) & !1;
        self.members.remove(&hash).then(|| {
            self.members.insert(hash | 1);
            Row::Skipped(SkippedRow {
                profile_id: Some(profile_id.to_string()),
                reason: SkipReason::UnknownProfile,
                location,
                detail: format!(
                    "the membership names profile `{}`, which {} does not have",
                    clean(profile_id, MAX_LABEL_CHARS),
                    clean(&self.source.profiles.display().to_string(), MAX_LABEL_CHARS)
                ),
            })
        })
    }
}

impl Iterator for MemberRows {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            match &mut self.phase {
                Phase::Profiles(records) => match records.next() {
                    Some(Err(e)) => return Some(Err(e)),
                    Some(Ok(record)) => {
                        if let Some(row) = self.next_profile(record) {
                            return Some(Ok(row));
                        }
                    }
                    None => match self
                        .unchanged()
                        .and_then(|()| self.source.membership_records())
                    {
                        Ok((records, id, segment)) => {
                            self.phase = Phase::Memberships(records, id, segment)
                        }
                        Err(e) => {
                            self.phase = Phase::Done;
                            return Some(Err(e));
                        }
                    },
                },
                Phase::Memberships(records, id, segment) => {
                    let (id, segment) = (*id, *segment);
                    match records.next() {
                        Some(Err(e)) => return Some(Err(e)),
                        Some(Ok(record)) => {
                            if let Some(row) = self.next_membership(record, id, segment) {
                                return Some(Ok(row));
                            }
                        }
                        None => {
                            self.phase = Phase::Done;
                            if let Err(e) = self.unchanged() {
                                return Some(Err(e));
                            }
                        }
                    }
                }
                Phase::Done => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn rows(source: &FileSource, segments: &[&str]) -> (Option<u64>, Vec<Row>) {
        let segments: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
        let stream = source.profiles(&segments).unwrap();
        (stream.total, stream.rows.collect::<Result<_>>().unwrap())
    }

    fn ids(rows: &[Row]) -> Vec<&str> {
        rows.iter()
            .filter_map(|r| match r {
                Row::Profile(p) => Some(p.id.as_str()),
                Row::Skipped(_) => None,
            })
            .collect()
    }

    fn skipped(rows: &[Row]) -> Vec<(SkipReason, Option<&str>, &str, &str)> {
        rows.iter()
            .filter_map(|r| match r {
                Row::Skipped(s) => Some((
                    s.reason,
                    s.profile_id.as_deref(),
                    s.location.as_str(),
                    s.detail.as_str(),
                )),
                Row::Profile(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_file_changed_while_a_run_reads_it_stops_the_run_with_the_reason() {
        let profiles: String = std::iter::once("id,email\n".to_string())
            .chain((0..2_000).map(|i| format!("{i},person{i}@x.io\n")))
            .collect();
        let memberships: String = std::iter::once("profile_id,segment\n".to_string())
            .chain((0..2_000).map(|i| format!("{i},all\n")))
            .collect();
        type Change = fn(&Path, &Path);
        let changes: [(&str, Change); 4] = [
            ("was truncated", |p, _| {
                let file = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                file.set_len(100).unwrap();
            }),
            ("was written to", |p, _| {
                let text = std::fs::read(p).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(10));
                std::fs::write(p, text.to_ascii_uppercase()).unwrap();
            }),
            ("was replaced by another file", |p, dir| {
                let new = dir.join("new.csv");
                std::fs::copy(p, &new).unwrap();
                std::fs::rename(new, p).unwrap();
            }),
            ("grew", |p, _| {
                use std::io::Write as _;
                let mut file = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                file.write_all(b"9999,late@x.io\n").unwrap();
            }),
        ];
        for (how, change) in changes {
            for which in ["p.csv", "m.csv"] {
                let dir = tempfile::tempdir().unwrap();
                let source = FileSource::new(
                    write(dir.path(), "p.csv", profiles.as_bytes()),
                    write(dir.path(), "m.csv", memberships.as_bytes()),
                    "id",
                )
                .unwrap();
                let mut stream = source.profiles(&["all".to_string()]).unwrap().rows;
                let first = stream.next().unwrap().unwrap();
                assert!(matches!(first, Row::Profile(_)));
                change(&dir.path().join(which), dir.path());
                let error = stream
                    .find_map(|row| row.err())
                    .unwrap_or_else(|| panic!("{which} {how} unnoticed"));
                let error = format!("{error:#}");
                assert!(
                    error.contains(&format!("{which} {how} while the run read it")),
                    "{which}: {error}"
                );
            }
        }
    }

    #[test]
    fn csv_and_json_lines_stream_only_segment_members_once() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let csv = write(
            dir,
            "p.csv",
            b"id,email,first\n1,a@x.io,Ann\n2,b@x.io,\n3,c@x.io,Cy\n",
        );
        let jsonl = write(
            dir,
            "p.jsonl",
            b"{\"id\":\"1\",\"email\":\"a@x.io\",\"first\":\"Ann\"}\n\n{\"id\":2,\"email\":\"b@x.io\",\"first\":null}\n{\"id\":\"3\",\"email\":\"c@x.io\",\"first\":\"Cy\"}\n",
        );
        let members = write(
            dir,
            "m.csv",
            b"profile_id,segment\n1,vip\n3,news\n1,news\n2,other\n",
        );
        for profiles in [csv, jsonl] {
            let source = FileSource::new(&profiles, &members, "id").unwrap();
            assert_eq!(source.columns().unwrap(), ["id", "email", "first"]);
            assert_eq!(
                source.segments().unwrap(),
                BTreeMap::from([("news".into(), 2), ("other".into(), 1), ("vip".into(), 1)])
            );
            let (total, got) = rows(&source, &["vip", "news"]);
            assert_eq!(total, Some(2));
            assert_eq!(ids(&got), ["1", "3"]);
            assert!(skipped(&got).is_empty());
            let Row::Profile(first) = &got[0] else {
                unreachable!()
            };
            assert_eq!(first.values[2].as_deref(), Some("Ann"));
        }
    }

    #[test]
    fn bad_csv_rows_are_skipped_with_their_line_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        // A byte-order mark, CRLF endings, a quoted comma and a quoted newline, a ragged row, a
        // byte that is not UTF-8, an empty id, a repeated id, and an unbalanced quote that
        // would swallow the rows after it.
        let mut csv = b"\xEF\xBB\xBFid,email,first\r\n".to_vec();
        csv.extend_from_slice(b"1,a@x.io,\"Ann, Jr.\"\r\n");
        csv.extend_from_slice(b"2,b@x.io,\"two\nlines\"\r\n");
        csv.extend_from_slice(b"3,c@x.io\r\n");
        csv.extend_from_slice(b"4,d@x.io,Zo\xE9\r\n");
        csv.extend_from_slice(b",e@x.io,Nobody\r\n");
        csv.extend_from_slice(b"1,again@x.io,Again\r\n");
        csv.extend_from_slice(b"5,\"f@x.io,Eve\r\n");
        csv.extend_from_slice(b"6,g@x.io,Gus\r\n");
        csv.extend_from_slice(b"7,h@x.io,Hal\r\n");
        let profiles = write(dir, "p.csv", &csv);
        let members = write(
            dir,
            "m.csv",
            b"profile_id,segment\n1,all\n2,all\n3,all\n4,all\n5,all\n6,all\n7,all\n8,all\n9,other\n",
        );
        let source = FileSource::new(&profiles, &members, "id").unwrap();
        assert_eq!(source.columns().unwrap(), ["id", "email", "first"]);
        let (total, got) = rows(&source, &["all"]);
        assert_eq!(total, Some(8));
        assert_eq!(ids(&got), ["1", "2", "6", "7"]);
        let Row::Profile(two) = &got[1] else {
            unreachable!()
        };
        assert_eq!(two.values[2].as_deref(), Some("two\nlines"));
        let skipped = skipped(&got);
        assert_eq!(
            skipped,
            [
                (
                    SkipReason::Unreadable,
                    Some("3"),
                    "p.csv line 5",
                    "2 fields where the header has 3"
                ),
                (
                    SkipReason::Unreadable,
                    Some("4"),
                    "p.csv line 6",
                    "column `first` is not UTF-8 (byte 0xE9)"
                ),
                (
                    SkipReason::Unreadable,
                    None,
                    "p.csv line 7",
                    "no profile id (column `id` is empty)"
                ),
                (
                    SkipReason::RepeatedId,
                    Some("1"),
                    "p.csv line 8",
                    "repeats profile id `1`; its first row is used"
                ),
                (
                    SkipReason::Unreadable,
                    Some("5"),
                    "p.csv line 9",
                    "a quote opened on this line never closes before the end of the file; reading resumes on line 10"
                ),
                (
                    SkipReason::UnknownProfile,
                    Some("8"),
                    "m.csv line 9",
                    &*format!(
                        "the membership names profile `8`, which {} does not have",
                        profiles.display()
                    )
                ),
            ]
        );
        let warnings = source.sample_warnings().unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("5 of the first 1000 rows cannot be used")
                && warnings[0].contains("p.csv line 5: 2 fields where the header has 3"),
            "{warnings:?}"
        );
    }

    #[test]
    fn bad_json_lines_are_skipped_and_columns_are_every_records_keys() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let profiles = write(
            dir,
            "p.jsonl",
            b"{\"id\":\"1\",\"email\":\"a@x.io\"}\n{\"id\":\"2\",\"email\":\"b@x.io\",\"plan\":\"pro\"}\n{\"id\":\"3\",\n[1,2]\n{\"id\":\"4\",\"first\":\"Zo\xE9\"}\n\r\n{\"id\":5,\"email\":\"e@x.io\",\"vip\":true}\n",
        );
        let members = write(
            dir,
            "m.jsonl",
            b"{\"profile_id\":\"1\",\"segment\":\"all\"}\n{\"profile_id\":\"2\",\"segment\":\"all\"}\n{\"profile_id\":\"5\",\"segment\":\"all\"}\n{\"profile_id\":\"6\"\n{\"profile_id\":\"7\",\"segment\":\"other\"}\n",
        );
        let source = FileSource::new(&profiles, &members, "id").unwrap();
        assert_eq!(
            source.columns().unwrap(),
            ["id", "email", "plan", "first", "vip"]
        );
        let (total, got) = rows(&source, &["all"]);
        assert_eq!(total, Some(3));
        assert_eq!(ids(&got), ["1", "2", "5"]);
        let five = got
            .iter()
            .find_map(|r| match r {
                Row::Profile(p) if p.id == "5" => Some(p),
                _ => None,
            })
            .unwrap();
        assert_eq!(five.values[4].as_deref(), Some("true"));
        let skipped = skipped(&got);
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert_eq!(
            (skipped[0].0, skipped[0].2),
            (SkipReason::Unreadable, "p.jsonl line 3")
        );
        assert!(skipped[0].3.starts_with("not valid JSON ("), "{skipped:?}");
        assert_eq!(
            skipped[1].3,
            "a JSON array where a record must be an object"
        );
        assert_eq!(skipped[2].3, "not UTF-8 (byte 0xE9 at column 22)");
        assert_eq!((skipped[3].1, skipped[3].2), (None, "m.jsonl line 4"));
        assert!(skipped[3].3.starts_with("membership row: not valid JSON"));
    }

    #[test]
    fn unsupported_missing_or_headless_files_are_named_in_the_error() {
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
        let dir = tempfile::tempdir().unwrap();
        let twice = write(dir.path(), "twice.csv", b"id,email,Email ,email\n");
        let members = write(dir.path(), "m.csv", b"profile_id,segment\n");
        let err = format!(
            "{:#}",
            FileSource::new(&twice, &members, "id")
                .unwrap()
                .columns()
                .unwrap_err()
        );
        assert!(
            err.ends_with("twice.csv: the header names `email` twice"),
            "{err}"
        );
    }

    #[test]
    fn a_line_too_long_to_hold_is_skipped_unread_and_lone_cr_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let members = write(dir, "m.csv", b"profile_id,segment\n1,all\n2,all\n3,all\n");
        // 17 MiB with no line end in the middle of the file, in each format.
        let huge = vec![b'x'; 17 << 20];
        let mut csv = b"id,email\n1,a@x.io\n2,".to_vec();
        csv.extend_from_slice(&huge);
        csv.extend_from_slice(b"\n3,c@x.io\n");
        let mut jsonl = b"{\"id\":\"1\",\"email\":\"a@x.io\"}\n{\"id\":\"2\",\"email\":\"".to_vec();
        jsonl.extend_from_slice(&huge);
        jsonl.extend_from_slice(b"\"}\n{\"id\":\"3\",\"email\":\"c@x.io\"}\n");
        for (profiles, line) in [
            (write(dir, "p.csv", &csv), "line 3"),
            (write(dir, "p.jsonl", &jsonl), "line 2"),
        ] {
            let source = FileSource::new(&profiles, &members, "id").unwrap();
            assert_eq!(source.columns().unwrap(), ["id", "email"]);
            let (_, got) = rows(&source, &["all"]);
            assert_eq!(ids(&got), ["1", "3"]);
            let skipped = skipped(&got);
            assert_eq!(skipped.len(), 2, "{skipped:?}");
            assert_eq!(skipped[0].0, SkipReason::Unreadable);
            assert!(skipped[0].2.ends_with(line), "{skipped:?}");
            assert_eq!(skipped[0].3, "the line is longer than 16 MiB");
            // The profile on that line could not be read, so its membership names no profile.
            assert_eq!(skipped[1].0, SkipReason::UnknownProfile);
        }

        let mac = write(dir, "mac.csv", b"id,email\r1,a@x.io\r2,b@x.io\r");
        let source = FileSource::new(&mac, &members, "id").unwrap();
        let err = format!("{:#}", source.columns().unwrap_err());
        assert!(err.contains("lines end with a lone CR"), "{err}");
    }
}
