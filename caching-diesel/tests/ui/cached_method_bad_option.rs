use caching_diesel::{cached_method, Cache};

struct Post;

impl Post {
    #[cached_method(timeout = "60")]
    fn a(&self, cache: &Cache) -> usize {
        let _ = cache;
        1
    }

    #[cached_method(ttl = 60)]
    fn b(&self, cache: &Cache) -> usize {
        let _ = cache;
        1
    }

    #[cached_method(tables = "posts")]
    fn d(&self, cache: &Cache) -> usize {
        let _ = cache;
        1
    }

    #[cached_method(tables = [posts])]
    fn e(&self, cache: &Cache) -> usize {
        let _ = cache;
        1
    }

    #[cached_method(timeout = 0)]
    fn c(&self, cache: &Cache) -> usize {
        let _ = cache;
        1
    }
}

fn main() {}
