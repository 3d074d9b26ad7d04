//! A load-time rewrite that lets the guest keep its own `__stack_pointer` across a switch.
//!
//! Every switch must leave `__stack_pointer` holding the running context's value. Done from
//! the host, that is a `Global::get` of the context leaving and a `Global::set` of the one
//! arriving, and wasmtime 48 rebuilds the global's type through the type registry on each of
//! them (`Global::_ty`): about a quarter of a round trip. The guest can do the same with one
//! `global.get` and one `global.set`, so the rewrite routes every reference to the import
//! `wasix_32v1.context_switch` through a function added to the module:
//!
//! ```wat
//! (func $switch (param $target i64) (result i32) (local $sp i32)
//!   (local.set $sp (global.get $__stack_pointer))
//!   (call $context_switch_saving_sp (local.get $target) (local.get $sp))
//!   (global.set $__stack_pointer (local.get $sp)))
//! ```
//!
//! where `$context_switch_saving_sp` ([`SAVING_MODULE`].[`SAVING_SWITCH`]) replaces the
//! original import in place. A context suspended inside it finds its own stack pointer again
//! when it resumes, whoever ran meanwhile; and the host learns the stack pointer it needs for
//! the shadow-stack check as an argument. The host still sets the global itself where no
//! wrapper runs: a context's first entry, one preempted at an epoch yield, the host playing
//! main, a trap.
//!
//! Nothing else changes: function, type and global indices stay where they are (the wrapper
//! is the last function, its new import type the last type), so element segments, exports,
//! `ref.func` and calls keep meaning what they meant, only pointing at the wrapper where they
//! pointed at the import. Custom sections are copied as they are: the name section keeps
//! naming the import (now the saving one), and DWARF, if any, may be a few bytes off in code
//! offsets after a call's index grew a byte.

use std::borrow::Cow;
use std::convert::Infallible;

use wasm_encoder::reencode::{Error, Reencode, utils};
use wasm_encoder::{
    CodeSection, EntityType, Function, FunctionSection, ImportSection, Instruction, TypeSection,
};
use wasmparser::{CompositeInnerType, Encoding, ExternalKind, Parser, Payload, TypeRef, ValType};

use crate::IMPORT_MODULE;

/// The import module of the stack-pointer-saving switch a rewritten guest calls.
pub const SAVING_MODULE: &str = "weft_wasix_context_v1";

/// `context_switch` with the caller's `__stack_pointer` as a second argument
/// (`(i64, i32) -> i32`), imported by rewritten guests only; see [`rewrite_guest`]. A
/// guest calling it must restore its own `__stack_pointer` when it returns: the host does
/// not.
pub const SAVING_SWITCH: &str = "context_switch_saving_sp";

/// What the rewrite needs to know about a module, from one scan.
#[derive(Debug)]
struct Plan {
    /// Function indices of `wasix_32v1.context_switch` imports of type `(i64) -> i32`.
    switch_imports: Vec<u32>,
    /// The first of them, which becomes the saving import.
    replaced: u32,
    /// Its type: `(i64) -> i32`, the wrapper's type too.
    switch_type: u32,
    /// The exported `__stack_pointer`, a mutable i32.
    stack_pointer: u32,
    /// Index of the saving import's type: one past the module's types.
    saving_type: u32,
    /// Index of the wrapper: one past the module's functions.
    wrapper: u32,
}

/// The guest module with `__stack_pointer` saved and restored by the guest around each
/// `context_switch` (see the module docs of `rewrite`); `wasm` itself when there is nothing
/// to rewrite or the module does not parse (compiling it then reports why). The result
/// needs the same linker as the original, [`add_to_linker`](crate::add_to_linker) having
/// defined the saving import. [`load_core_module`](crate::load_core_module) applies it.
pub fn rewrite_guest(wasm: &[u8]) -> Cow<'_, [u8]> {
    let Some(plan) = plan(wasm) else {
        return Cow::Borrowed(wasm);
    };
    let mut rewriter = Rewriter {
        plan: &plan,
        next_import_func: 0,
    };
    let mut module = wasm_encoder::Module::new();
    match rewriter.parse_core_module(&mut module, Parser::new(0), wasm) {
        Ok(()) => Cow::Owned(module.finish()),
        Err(_) => Cow::Borrowed(wasm),
    }
}

fn plan(wasm: &[u8]) -> Option<Plan> {
    let mut switch_types: Vec<bool> = Vec::new();
    let mut globals: Vec<wasmparser::GlobalType> = Vec::new();
    let mut switch_imports = Vec::new();
    let mut switch_type = None;
    let mut funcs: u32 = 0;
    let mut stack_pointer = None;
    let mut has_code = false;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.ok()? {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } => {}
            Payload::Version { .. } => return None,
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group.ok()?.types() {
                        let ty = &sub.composite_type;
                        switch_types.push(
                            !ty.shared
                                && matches!(&ty.inner,
                            CompositeInnerType::Func(f)
                                if f.params() == [ValType::I64] && f.results() == [ValType::I32]),
                        );
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.ok()?;
                    match import.ty {
                        TypeRef::Func(ty) => {
                            if import.module == IMPORT_MODULE
                                && import.name == "context_switch"
                                && switch_types.get(ty as usize) == Some(&true)
                            {
                                switch_imports.push(funcs);
                                switch_type.get_or_insert(ty);
                            }
                            funcs += 1;
                        }
                        TypeRef::FuncExact(_) => funcs += 1,
                        TypeRef::Global(ty) => globals.push(ty),
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => funcs += reader.count(),
            Payload::GlobalSection(reader) => {
                for global in reader {
                    globals.push(global.ok()?.ty);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.ok()?;
                    if export.name == "__stack_pointer" && export.kind == ExternalKind::Global {
                        stack_pointer = Some(export.index);
                    }
                }
            }
            Payload::CodeSectionStart { .. } => has_code = true,
            _ => {}
        }
    }
    let stack_pointer = stack_pointer?;
    let sp_type = globals.get(stack_pointer as usize)?;
    if !(sp_type.mutable && !sp_type.shared && sp_type.content_type == ValType::I32) {
        return None;
    }
    // Without a code section there is no caller to rewrite (and no section for the wrapper).
    if !has_code {
        return None;
    }
    Some(Plan {
        replaced: *switch_imports.first()?,
        switch_imports,
        switch_type: switch_type?,
        stack_pointer,
        saving_type: u32::try_from(switch_types.len()).ok()?,
        wrapper: funcs,
    })
}

struct Rewriter<'a> {
    plan: &'a Plan,
    /// Function imports seen so far: the function index of the next one.
    next_import_func: u32,
}

impl Rewriter<'_> {
    fn wrapper_body(&self) -> Function {
        let (target, sp) = (0, 1);
        let mut body = Function::new([(1, wasm_encoder::ValType::I32)]);
        for instruction in [
            Instruction::GlobalGet(self.plan.stack_pointer),
            Instruction::LocalSet(sp),
            Instruction::LocalGet(target),
            Instruction::LocalGet(sp),
            Instruction::Call(self.plan.replaced),
            Instruction::LocalGet(sp),
            Instruction::GlobalSet(self.plan.stack_pointer),
            Instruction::End,
        ] {
            body.instruction(&instruction);
        }
        body
    }
}

impl Reencode for Rewriter<'_> {
    type Error = Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, Error<Infallible>> {
        Ok(if self.plan.switch_imports.contains(&func) {
            self.plan.wrapper
        } else {
            func
        })
    }

    fn parse_type_section(
        &mut self,
        types: &mut TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), Error<Infallible>> {
        utils::parse_type_section(self, types, section)?;
        use wasm_encoder::ValType::{I32, I64};
        types.ty().function([I64, I32], [I32]);
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), Error<Infallible>> {
        // One by one (compact encodings flattened) so the replaced import can be swapped.
        for import in section.into_imports() {
            let import = import?;
            let is_func = matches!(import.ty, TypeRef::Func(_) | TypeRef::FuncExact(_));
            if is_func && self.next_import_func == self.plan.replaced {
                imports.import(
                    SAVING_MODULE,
                    SAVING_SWITCH,
                    EntityType::Function(self.plan.saving_type),
                );
            } else {
                utils::parse_import(self, imports, import)?;
            }
            if is_func {
                self.next_import_func += 1;
            }
        }
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), Error<Infallible>> {
        utils::parse_function_section(self, functions, section)?;
        functions.function(self.plan.switch_type);
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), Error<Infallible>> {
        utils::parse_code_section(self, code, section)?;
        code.function(&self.wrapper_body());
        Ok(())
    }

    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), Error<Infallible>> {
        // As they are: remapping the name section would move the import's name to the
        // wrapper and out of index order, for no gain.
        module.section(&self.custom_section(section)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(wat: &str) -> Option<String> {
        let wasm = wat::parse_str(wat).unwrap();
        match rewrite_guest(&wasm) {
            Cow::Borrowed(_) => None,
            Cow::Owned(out) => {
                wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
                    .validate_all(&out)
                    .expect("the rewrite is valid wasm");
                Some(wasmprinter_free_summary(&out))
            }
        }
    }

    /// Imports and function count of a module, enough to see what the rewrite did.
    fn wasmprinter_free_summary(wasm: &[u8]) -> String {
        let mut out = String::new();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.unwrap() {
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.unwrap();
                        out += &format!("import {}.{} ", import.module, import.name);
                    }
                }
                Payload::FunctionSection(reader) => out += &format!("defined {} ", reader.count()),
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export.unwrap();
                        out += &format!("export {}={} ", export.name, export.index);
                    }
                }
                _ => {}
            }
        }
        out
    }

    const GUEST: &str = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (import "wasix_32v1" "context_switch" (func $switch (param i64) (result i32)))
        (memory (export "memory") 1)
        (global $sp (export "__stack_pointer") (mut i32) (i32.const 1024))
        (table (export "__indirect_function_table") 2 funcref)
        (elem (i32.const 1) $switch)
        (func (export "go") (result i32) (call $switch (i64.const 0)))
        (export "raw_switch" (func $switch)))"#;

    #[test]
    fn references_to_the_import_go_through_the_wrapper() {
        let summary = rewritten(GUEST).expect("rewritten");
        assert_eq!(
            summary,
            "import wasi_snapshot_preview1.proc_exit import weft_wasix_context_v1.\
             context_switch_saving_sp defined 2 export memory=0 export __stack_pointer=0 \
             export __indirect_function_table=0 export go=2 export raw_switch=3 "
        );
        // A second pass has nothing to do.
        let once = rewrite_guest(&wat::parse_str(GUEST).unwrap()).into_owned();
        assert!(matches!(rewrite_guest(&once), Cow::Borrowed(_)));
    }

    #[test]
    fn modules_it_cannot_serve_are_left_alone() {
        let untouched = [
            // No context_switch import.
            r#"(module (global (export "__stack_pointer") (mut i32) (i32.const 0)) (func))"#,
            // No __stack_pointer, or an immutable one.
            r#"(module (import "wasix_32v1" "context_switch" (func (param i64) (result i32)))
                (func))"#,
            r#"(module (import "wasix_32v1" "context_switch" (func (param i64) (result i32)))
                (global (export "__stack_pointer") i32 (i32.const 0)) (func))"#,
            // The import with the wrong type (the linker refuses it later).
            r#"(module (import "wasix_32v1" "context_switch" (func (param i32) (result i32)))
                (global (export "__stack_pointer") (mut i32) (i32.const 0)) (func))"#,
            // No code.
            r#"(module (import "wasix_32v1" "context_switch" (func (param i64) (result i32)))
                (global (export "__stack_pointer") (mut i32) (i32.const 0)))"#,
        ];
        for wat in untouched {
            assert_eq!(rewritten(wat), None, "{wat}");
        }
        assert!(matches!(rewrite_guest(b"\0asm garbage"), Cow::Borrowed(_)));
    }
}
