//! The undelivered contacts of a run as CSV, for the CLI and the HTTP API alike.

use std::io::Write;

use anyhow::{Context, Result};

use crate::run::RunIssue;
use crate::text::csv_cell;

/// Writes contacts that were not delivered, with reasons, as CSV: profile_id, email, kind,
/// stage, code, message, since. No cell can start a spreadsheet formula.
pub struct IssueCsv<W: Write> {
    writer: csv::Writer<W>,
    count: u64,
}

impl IssueCsv<std::io::BufWriter<std::fs::File>> {
    /// A CSV file at `path`.
    /// A new file readable by its owner only: it holds email addresses.
    pub fn create(path: &std::path::Path) -> Result<Self> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // An existing file keeps its mode through `open`: narrow it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
        IssueCsv::new(std::io::BufWriter::new(file))
    }
}

impl<W: Write> IssueCsv<W> {
    /// CSV to `out`, header first.
    pub fn new(out: W) -> Result<Self> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record([
            "profile_id",
            "email",
            "kind",
            "stage",
            "code",
            "message",
            "since",
        ])?;
        Ok(IssueCsv { writer, count: 0 })
    }

    /// One row.
    pub fn write(&mut self, i: &RunIssue) -> Result<()> {
        let stage = serde_json::to_value(i.stage)?;
        let cells = [
            &i.profile_id,
            &i.email,
            i.kind.label(),
            stage.as_str().unwrap_or(""),
            &i.code,
            &i.message,
            i.since.as_deref().unwrap_or(""),
        ];
        self.writer
            .write_record(cells.iter().map(|c| csv_cell(c).into_owned()))?;
        self.count += 1;
        Ok(())
    }

    /// Flushes; the writer it wrote to.
    pub fn into_inner(self) -> Result<W> {
        self.writer
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write the CSV: {}", e.error()))
    }

    /// Flushes; returns the rows written.
    pub fn finish(mut self) -> Result<u64> {
        self.writer.flush()?;
        Ok(self.count)
    }
}
