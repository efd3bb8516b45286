use caching_diesel::Cached;
use diesel::Queryable;
use serde::{Deserialize, Serialize};

// Diesel's primary_key names columns: a renamed field is found by its column name.
#[derive(Queryable, Cached, Serialize, Deserialize)]
#[diesel(primary_key(key))]
struct Entry {
    #[diesel(column_name = entry_key)]
    key: i32,
    value: String,
}

fn main() {}
