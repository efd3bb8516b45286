use caching_diesel::{cached_method, Cache};

struct Post;

impl Post {
    #[cached_method]
    fn show<T: std::fmt::Display>(&self, cache: &Cache, value: T) -> String {
        let _ = cache;
        value.to_string()
    }
}

fn main() {}
