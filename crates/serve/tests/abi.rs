//! The guest ABI is written down once (`docs/weft-http-abi.md`) and declared once for C
//! (`guests/include/weft/http.h`, `guests/include/weft/errno.h`): these tests hold the header,
//! the document and the host's linker to the same list of imports, signatures and errnos.

use std::collections::BTreeMap;
use std::path::PathBuf;

use wasmtime::ValType;
use weft_serve::wasix::{IMPORT_MODULE, import_signatures};
use weft_wasix_context::Errno;

fn repo_file(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A wasm value type as a C declaration in the header spells it.
fn wasm_type_of_c(c: &str) -> Option<&'static str> {
    let c = c.trim();
    if c == "void" {
        None
    } else if c.contains('*') || c == "int32_t" || c.ends_with(" int32_t") {
        Some("i32")
    } else if c == "int64_t" {
        Some("i64")
    } else {
        panic!("the header uses C type `{c}`, which this test does not map to a wasm type")
    }
}

fn wasm_name(ty: &ValType) -> &'static str {
    match ty {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        other => panic!("the ABI uses {other}, which C guests cannot pass"),
    }
}

/// `name -> (params, results)` of every `WEFT_HTTP_IMPORT("name")` declaration in the header.
fn header_imports(header: &str) -> BTreeMap<String, (Vec<&'static str>, Vec<&'static str>)> {
    // Declarations end with `;` and may span lines; only the raw imports carry the macro call.
    let mut imports = BTreeMap::new();
    for declaration in header.split(';') {
        let Some(at) = declaration.find("WEFT_HTTP_IMPORT(\"") else {
            continue;
        };
        let name_start = at + "WEFT_HTTP_IMPORT(\"".len();
        let name_end = name_start + declaration[name_start..].find('"').unwrap();
        let name = declaration[name_start..name_end].to_string();
        // The prototype starts at the last unindented line before the macro (comments and
        // earlier text of this `;`-piece come before it).
        let before = &declaration[..at];
        let start = before
            .match_indices('\n')
            .map(|(i, _)| i + 1)
            .rfind(|&i| before[i..].starts_with("int"))
            .unwrap_or(0);
        let prototype = before[start..]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let prototype = prototype.as_str();
        let open = prototype.find('(').expect("a prototype has parameters");
        let close = prototype.rfind(')').expect("a prototype has parameters");
        let head = &prototype[..open];
        let function = head.split_whitespace().last().unwrap();
        let result_type = head[..head.len() - function.len()].trim();
        let results: Vec<_> = wasm_type_of_c(result_type).into_iter().collect();
        let params_text = prototype[open + 1..close].trim();
        let params = if params_text == "void" {
            Vec::new()
        } else {
            params_text
                .split(',')
                .map(|param| {
                    let param = param.trim();
                    // Drop the parameter's name, keep its type.
                    let cut = param
                        .rfind(|c: char| c == '*' || c.is_whitespace())
                        .expect("parameters are named");
                    wasm_type_of_c(&param[..=cut]).unwrap()
                })
                .collect()
        };
        assert!(
            imports.insert(name.clone(), (params, results)).is_none(),
            "`{name}` is declared twice"
        );
    }
    imports
}

#[test]
fn the_header_declares_exactly_the_imports_the_host_provides() {
    let header = repo_file("guests/include/weft/http.h");
    assert!(
        header.contains(&format!("import_module(\"{IMPORT_MODULE}\")")),
        "the header must import from {IMPORT_MODULE}"
    );
    let declared = header_imports(&header);
    let provided: BTreeMap<String, (Vec<&'static str>, Vec<&'static str>)> = import_signatures()
        .into_iter()
        .map(|(name, ty)| {
            (
                name,
                (
                    ty.params().map(|t| wasm_name(&t)).collect(),
                    ty.results().map(|t| wasm_name(&t)).collect(),
                ),
            )
        })
        .collect();
    assert_eq!(provided.len(), 23, "the host provides 23 imports");
    assert_eq!(declared, provided);
}

#[test]
fn the_abi_document_lists_exactly_the_imports_the_host_provides() {
    let doc = repo_file("docs/weft-http-abi.md");
    assert!(doc.contains(&format!("`{IMPORT_MODULE}`")));
    let documented: Vec<String> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("#### `"))
        .map(|rest| rest.trim_end_matches('`').to_string())
        .collect();
    let mut sorted = documented.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        documented.len(),
        "an import is documented twice"
    );
    let provided: Vec<String> = import_signatures().into_iter().map(|(n, _)| n).collect();
    assert_eq!(sorted, provided);
    // Each entry states the import's signature as the linker has it.
    for (name, ty) in import_signatures() {
        let params: Vec<_> = ty.params().map(|t| wasm_name(&t)).collect();
        let entry = doc.split(&format!("#### `{name}`")).nth(1).unwrap();
        let signature = entry.split("->").next().unwrap();
        let count = signature.matches(": i32").count() + signature.matches(": i64").count();
        assert_eq!(count, params.len(), "the signature documented for `{name}`");
    }
}

#[test]
fn the_errno_header_and_document_match_the_host_definition() {
    let header = repo_file("guests/include/weft/errno.h");
    let defined: BTreeMap<String, i32> = header
        .lines()
        .filter_map(|line| line.strip_prefix("#define WEFT_E"))
        .filter_map(|rest| {
            // `#define WEFT_EAGAIN 6`; the include guard has no value.
            let mut parts = rest.split_whitespace();
            let name = format!("E{}", parts.next()?);
            Some((name, parts.next()?.parse().ok()?))
        })
        .collect();
    let host: BTreeMap<String, i32> = Errno::ALL
        .into_iter()
        .map(|e| (e.name().to_string(), e.raw()))
        .collect();
    assert_eq!(defined, host);
    let doc = repo_file("docs/weft-http-abi.md");
    for errno in Errno::ALL {
        assert!(
            doc.contains(&format!("| `{}` | {} |", errno.name(), errno.raw())),
            "the ABI document's errno table lacks {}",
            errno.name()
        );
    }
}
