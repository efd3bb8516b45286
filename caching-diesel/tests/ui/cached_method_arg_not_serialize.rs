use caching_diesel::prelude::*;
use caching_diesel::{cached_method, Cache};

diesel::table! { posts (id) { id -> Integer } }

#[derive(Queryable, Identifiable, Cached, serde::Serialize, serde::Deserialize)]
struct Post {
    id: i32,
}

struct Opaque;

impl Post {
    #[cached_method]
    fn weigh(&self, cache: &Cache, opaque: Opaque) -> i32 {
        let _ = (cache, opaque);
        self.id
    }
}

fn main() {}
