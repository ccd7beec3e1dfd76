fn main() {
    for raw in [
        r#"{"resourceType":"Observation","status":"final","code":{"text":"bp"},"valueQuantity":{"value":120,"unit":"mm[Hg]"}}"#,
        r#"{"resourceType":"Observation","status":"final","code":{"text":"bp"},"valueQuantity":{"value":120.5}}"#,
    ] {
        let e = fhirbolt::json::from_str::<fhirbolt::model::r4::Resource>(raw, None).err();
        println!("enum: {:?}", e.map(|e| e.to_string()));
        let e = fhirbolt::json::from_str::<fhirbolt::model::r4::resources::Observation>(raw, None)
            .err();
        println!("typed: {:?}", e.map(|e| e.to_string()));
        let e = fhirbolt::json::from_reader::<_, fhirbolt::model::r4::resources::Observation>(
            raw.as_bytes(),
            None,
        )
        .err();
        println!("reader: {:?}", e.map(|e| e.to_string()));
    }
}
