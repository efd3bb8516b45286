use caching_diesel::{cached_method, Cache};

struct Post;

impl Post {
    #[cached_method]
    fn show<T: std::fmt::Display>(&self, cache: &Cache, value: T) -> String {
        let _ = cache;
        value.to_string()
    }

    #[cached_method]
    fn repeat<const N: usize>(&self, cache: &Cache) -> usize {
        let _ = cache;
        N
    }
}

fn main() {}
