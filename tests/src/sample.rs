//! Deterministic sample profiles: names, emails (some invalid, some duplicated in other letter
//! case, some missing) and segment memberships, all derived from the profile's index and a seed.
//! The same generator backs the sample files and [`GeneratedSource`], which streams any number
//! of profiles without storing them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use connector_host::{Profile, ProfileSource, ProfileStream};

/// The segments sample profiles belong to; `everyone` holds every profile.
pub const SEGMENTS: [&str; 4] = ["newsletter", "vip", "churned", "everyone"];
/// The seed and size of the sample data `vendor-sim --sample-data` writes for README.md's
/// first session (and its test).
pub const README_SEED: u64 = 2026;
pub const README_PROFILES: u64 = 5_000;
/// The columns of sample profiles.
pub const COLUMNS: [&str; 5] = ["id", "email", "first_name", "last_name", "city"];

const FIRST: [&str; 16] = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "John",
    "Katherine",
    "Linus",
    "Margaret",
    "Niklaus",
    "Radia",
    "Tim",
    "Ken",
    "Sophie",
];
const LAST: [&str; 16] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Backus",
    "Johnson",
    "Torvalds",
    "Hamilton",
    "Wirth",
    "Perlman",
    "Berners-Lee",
    "Thompson",
    "Wilson",
];
const CITIES: [&str; 6] = ["Berlin", "Lisbon", "Oslo", "Austin", "Osaka", "Nairobi"];
const DOMAINS: [&str; 3] = ["example.com", "mail.example.org", "example.net"];

/// One generated profile.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleProfile {
    pub id: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: String,
    pub city: String,
    pub segments: Vec<&'static str>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: a fast, well-distributed deterministic hash of the index.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The profile at `index` for `seed`. About 2% of emails are invalid, 1.5% repeat an earlier
/// profile's email in other letter case, 0.5% are missing; 65% are in `newsletter`, 15% in `vip`,
/// all in `everyone`.
pub fn profile(seed: u64, index: u64) -> SampleProfile {
    let r = mix(seed ^ mix(index));
    let first = FIRST[(r % 16) as usize];
    let last = LAST[((r >> 8) % 16) as usize];
    let base = format!("{}.{}.{index}", first.to_lowercase(), last.to_lowercase());
    let domain = DOMAINS[((r >> 16) % 3) as usize];
    let kind = (r >> 20) % 1000;
    let email = match kind {
        // Four kinds no vendor takes (the host refuses them itself), and one only the vendor
        // refuses (its top-level domain has a digit).
        0..20 => Some(match kind % 5 {
            0 => format!("{base}.{domain}"),
            1 => format!("{first} {last}@{domain}"),
            2 => format!("{base}@example"),
            3 => format!("{base}@@{domain}"),
            _ => format!("{base}@{domain}1"),
        }),
        20..35 if index > 0 => {
            let earlier = index - 1 - (r >> 32) % index.min(500);
            profile(seed, earlier).email.map(|e| e.to_uppercase())
        }
        35..40 => None,
        _ => Some(format!("{base}@{domain}")),
    };
    SampleProfile {
        id: format!("p{index:07}"),
        email,
        first_name: ((r >> 36) % 100 >= 3).then(|| first.to_string()),
        last_name: last.to_string(),
        city: CITIES[((r >> 24) % 6) as usize].to_string(),
        segments: segments_of(seed, index),
    }
}

/// The segments of the profile at `index`, without building the profile.
pub fn segments_of(seed: u64, index: u64) -> Vec<&'static str> {
    let mask = membership(seed, index);
    (0..SEGMENTS.len())
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| SEGMENTS[i])
        .collect()
}

/// The segments of the profile at `index` as a bit mask over [`SEGMENTS`]: cheap enough to
/// filter a million profiles with.
fn membership(seed: u64, index: u64) -> u8 {
    let r = mix(seed ^ mix(index));
    let mut mask = 0;
    if (r >> 40) % 100 < 65 {
        mask |= 1;
    }
    if (r >> 48) % 100 < 15 {
        mask |= 2;
    }
    if mask == 0 && (r >> 56) % 100 < 50 {
        mask |= 4;
    }
    mask | 8
}

/// Paths of a written sample.
#[derive(Debug, Clone)]
pub struct SampleFiles {
    pub profiles: PathBuf,
    pub memberships: PathBuf,
}

/// Writes `count` profiles and their memberships as CSV files into `dir`.
pub fn write_csv(dir: &Path, seed: u64, count: u64) -> Result<SampleFiles> {
    std::fs::create_dir_all(dir)?;
    let files = SampleFiles {
        profiles: dir.join("profiles.csv"),
        memberships: dir.join("memberships.csv"),
    };
    let mut profiles = csv::Writer::from_path(&files.profiles)?;
    let mut memberships = csv::Writer::from_path(&files.memberships)?;
    profiles.write_record(COLUMNS)?;
    memberships.write_record(["profile_id", "segment"])?;
    for i in 0..count {
        let p = profile(seed, i);
        profiles.write_record([
            &p.id,
            p.email.as_deref().unwrap_or(""),
            p.first_name.as_deref().unwrap_or(""),
            &p.last_name,
            &p.city,
        ])?;
        for s in &p.segments {
            memberships.write_record([p.id.as_str(), s])?;
        }
    }
    profiles.flush()?;
    memberships.flush()?;
    Ok(files)
}

/// Writes the same sample as JSON Lines.
pub fn write_jsonl(dir: &Path, seed: u64, count: u64) -> Result<SampleFiles> {
    std::fs::create_dir_all(dir)?;
    let files = SampleFiles {
        profiles: dir.join("profiles.jsonl"),
        memberships: dir.join("memberships.jsonl"),
    };
    let mut profiles = std::io::BufWriter::new(std::fs::File::create(&files.profiles)?);
    let mut memberships = std::io::BufWriter::new(std::fs::File::create(&files.memberships)?);
    for i in 0..count {
        let p = profile(seed, i);
        let row = serde_json::json!({"id": p.id, "email": p.email, "first_name": p.first_name, "last_name": p.last_name, "city": p.city});
        writeln!(profiles, "{row}")?;
        for s in &p.segments {
            writeln!(
                memberships,
                "{}",
                serde_json::json!({"profile_id": p.id, "segment": s})
            )?;
        }
    }
    profiles.flush()?;
    memberships.flush()?;
    Ok(files)
}

/// A [`ProfileSource`] that generates profiles on the fly: any size, nothing stored. This is also
/// the model of an embedder's own source.
#[derive(Debug, Clone)]
pub struct GeneratedSource {
    pub seed: u64,
    pub count: u64,
}

impl ProfileSource for GeneratedSource {
    fn columns(&self) -> Result<Vec<String>> {
        Ok(COLUMNS.iter().map(|c| c.to_string()).collect())
    }

    fn segments(&self) -> Result<BTreeMap<String, u64>> {
        let mut counts: BTreeMap<String, u64> =
            SEGMENTS.iter().map(|s| (s.to_string(), 0)).collect();
        for i in 0..self.count {
            for s in segments_of(self.seed, i) {
                *counts.get_mut(s).unwrap() += 1;
            }
        }
        Ok(counts)
    }

    fn profiles(&self, segments: &[String]) -> Result<ProfileStream> {
        let (seed, count) = (self.seed, self.count);
        let wanted = SEGMENTS
            .iter()
            .enumerate()
            .filter(|(_, s)| segments.iter().any(|w| w == *s))
            .fold(0u8, |mask, (i, _)| mask | 1 << i);
        let member = move |i: &u64| membership(seed, *i) & wanted != 0;
        let total = (0..count).filter(&member).count() as u64;
        let profiles = (0..count)
            .filter(member)
            .map(move |i| profile(seed, i))
            .map(|p| {
                Ok(Profile {
                    id: p.id.clone(),
                    values: vec![
                        Some(p.id),
                        p.email,
                        p.first_name,
                        Some(p.last_name),
                        Some(p.city),
                    ],
                })
            });
        Ok(ProfileStream::of_profiles(Some(total), profiles))
    }
}

/// Loads the same sample into PostgreSQL, as a platform would hand its profiles over: tables
/// `profiles` (the columns of the CSV; a missing value is NULL) and `memberships`
/// (`profile_id`, `segment`) in the database at `url`.
pub async fn write_postgres(url: &str, seed: u64, count: u64) -> Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE profiles (id TEXT PRIMARY KEY, email TEXT, first_name TEXT,
                 last_name TEXT, city TEXT);
             CREATE TABLE memberships (profile_id TEXT NOT NULL, segment TEXT NOT NULL);",
        )
        .await?;
    const CHUNK: u64 = 20_000;
    for start in (0..count).step_by(CHUNK as usize) {
        let (mut ids, mut emails, mut firsts, mut lasts, mut cities) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut member_ids, mut segments) = (vec![], vec![]);
        for i in start..(start + CHUNK).min(count) {
            let p = profile(seed, i);
            for s in &p.segments {
                member_ids.push(p.id.clone());
                segments.push(s.to_string());
            }
            ids.push(p.id);
            emails.push(p.email);
            firsts.push(p.first_name);
            lasts.push(p.last_name);
            cities.push(p.city);
        }
        client
            .execute(
                "INSERT INTO profiles SELECT * FROM unnest($1::text[], $2::text[], $3::text[],
                     $4::text[], $5::text[])",
                &[&ids, &emails, &firsts, &lasts, &cities],
            )
            .await?;
        client
            .execute(
                "INSERT INTO memberships SELECT * FROM unnest($1::text[], $2::text[])",
                &[&member_ids, &segments],
            )
            .await?;
    }
    client
        .batch_execute("ANALYZE profiles; ANALYZE memberships")
        .await?;
    Ok(())
}
