use pmoas_testbed::lite::LitePod;
fn main() {
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let mut pods = Vec::new();
    for _ in 0..n {
        pods.push(LitePod::create(&[Some("envoy"), Some("app"), Some("worker")]).unwrap());
    }
    eprintln!("READY {n}");
    let mut s = String::new();
    std::io::stdin().read_line(&mut s).ok();
    drop(pods);
    eprintln!("DONE");
}
