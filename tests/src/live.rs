//! A profile source whose segment changes between runs, held in memory as an embedder's own
//! store would hand profiles over: people join, leave and come back, change names and emails.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::Result;
use connector_host::{Profile, ProfileSource, ProfileStream};

/// One person of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// A custom field (a vendor list's own field).
    pub plan: Option<String>,
}

impl Person {
    /// Person `i`: `person{i}@example.org`, First{i} Last{i}, on the free plan.
    pub fn numbered(i: u32) -> Person {
        Person {
            id: format!("p{i}"),
            email: Some(format!("person{i}@example.org")),
            first_name: Some(format!("First{i}")),
            last_name: Some(format!("Last{i}")),
            plan: Some(if i.is_multiple_of(3) { "pro" } else { "free" }.into()),
        }
    }
}

/// The segment `members`, as it is now.
#[derive(Default)]
pub struct LiveSource {
    members: Mutex<Vec<Person>>,
}

impl LiveSource {
    /// Replaces the segment's members.
    pub fn set(&self, members: Vec<Person>) {
        *self.members.lock().unwrap() = members;
    }

    /// The segment's members now.
    pub fn members(&self) -> Vec<Person> {
        self.members.lock().unwrap().clone()
    }
}

impl ProfileSource for LiveSource {
    fn columns(&self) -> Result<Vec<String>> {
        Ok(["id", "email", "first_name", "last_name", "plan"]
            .map(String::from)
            .to_vec())
    }

    fn segments(&self) -> Result<BTreeMap<String, u64>> {
        Ok(BTreeMap::from([(
            "members".to_string(),
            self.members.lock().unwrap().len() as u64,
        )]))
    }

    fn profiles(&self, _segments: &[String]) -> Result<ProfileStream> {
        let members = self.members();
        Ok(ProfileStream::of_profiles(
            Some(members.len() as u64),
            members.into_iter().map(|p| {
                Ok(Profile {
                    id: p.id.clone(),
                    values: vec![Some(p.id), p.email, p.first_name, p.last_name, p.plan],
                })
            }),
        ))
    }
}
