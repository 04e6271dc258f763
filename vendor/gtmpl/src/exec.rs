use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;
use std::time::Instant;

use crate::error::ExecError;
use crate::node::*;
use crate::template::Template;
use crate::utils::is_true;

use gtmpl_value::{Func, Value};

const MAX_TEMPLATE_DEPTH: usize = 100_000;

/// Bounds on parsing and executing one template (runner patch, see
/// PATCHES.md). The defaults are gtmpl's own behaviour: unbounded but for
/// 100 000 nested `{{template}}` calls.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How deeply `{{template}}` calls may nest.
    pub max_template_depth: usize,
    /// How deeply `if`/`range`/`with`/`else if`/`block` and parentheses may
    /// nest in the text (the parser recurses once per level).
    pub max_syntax_nesting: usize,
    /// Work units one execution may spend: one per node walked, range
    /// iteration and command or argument evaluated, plus one per KiB of every
    /// value copied or returned by a function.
    pub max_steps: u64,
    /// The largest value (in bytes, roughly as printed) a function may return.
    pub max_value_bytes: usize,
    /// When execution gives up, checked every 1024 steps.
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_template_depth: MAX_TEMPLATE_DEPTH,
            max_syntax_nesting: usize::MAX,
            max_steps: u64::MAX,
            max_value_bytes: usize::MAX,
            deadline: None,
        }
    }
}

/// Roughly how many bytes `v` takes printed (and so to copy).
pub fn value_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a
            .iter()
            .fold(2, |n, v| n.saturating_add(value_size(v)).saturating_add(1)),
        Value::Object(o) | Value::Map(o) => o.iter().fold(5, |n, (k, v)| {
            n.saturating_add(k.len())
                .saturating_add(value_size(v))
                .saturating_add(2)
        }),
        _ => 24,
    }
}

struct Variable {
    name: String,
    value: Value,
}

/// How a walk ended (runner patch): normally, or at a `{{break}}` or
/// `{{continue}}` that the innermost enclosing `range` acts on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flow {
    Normal,
    Break,
    Continue,
}

struct State<'a, 'b, T: Write> {
    template: &'a Template,
    writer: &'b mut T,
    node: Option<&'a Nodes>,
    // runner patch: one stack, as Go's `state.vars`: a control structure
    // pops what was declared in it (`mark`/`truncate`), and `$x = …`
    // updates the nearest declaration.
    vars: Vec<Variable>,
    depth: usize,
    budget: Rc<Budget>,
}

/// What one execution has spent, shared by the states of called templates
/// (runner patch).
#[derive(Default)]
struct Budget {
    /// Steps, against `Limits::max_steps`.
    steps: Cell<u64>,
    /// Bytes held in the buffers of the `executeTemplate` calls under way,
    /// against `Limits::max_value_bytes`: nested calls each buffer their
    /// output, so each alone bounded would hold the limit times the depth.
    buffered: Cell<usize>,
}

/// Collects the output of `executeTemplate`, refusing to hold more than
/// `max` bytes together with the enclosing calls' buffers (runner patch):
/// the result is a value, bounded as values are.
struct BoundedBuf {
    buf: Vec<u8>,
    max: usize,
    budget: Rc<Budget>,
    overflow: Option<usize>,
}

impl BoundedBuf {
    /// The output, no longer held against the budget.
    fn into_string(mut self) -> String {
        let buf = std::mem::take(&mut self.buf);
        let held = self.budget.buffered.get();
        self.budget.buffered.set(held.saturating_sub(buf.len()));
        // Text and values are strings, so the output is UTF-8.
        String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl Drop for BoundedBuf {
    fn drop(&mut self) {
        let held = self.budget.buffered.get();
        self.budget
            .buffered
            .set(held.saturating_sub(self.buf.len()));
    }
}

impl Write for BoundedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let held = self.budget.buffered.get();
        let size = held.saturating_add(data.len());
        if size > self.max {
            self.overflow = Some(size);
            return Err(std::io::Error::other(
                "executeTemplate output over the value limit",
            ));
        }
        self.buf.extend_from_slice(data);
        self.budget.buffered.set(size);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A Context for the template. Passed to the template exectution.
pub struct Context {
    dot: Value,
}

impl Context {
    pub fn empty() -> Context {
        Context { dot: Value::Nil }
    }

    pub fn from<T>(value: T) -> Context
    where
        T: Into<Value>,
    {
        let serialized: Value = value.into();
        Context { dot: serialized }
    }
}

impl<'b> Template {
    pub fn execute<T: Write>(&self, writer: &'b mut T, data: &Context) -> Result<(), ExecError> {
        let vars = vec![Variable {
            name: "$".to_owned(),
            value: data.dot.clone(),
        }];

        let mut state = State {
            template: self,
            writer,
            node: None,
            vars,
            depth: 0,
            budget: Rc::new(Budget::default()),
        };

        let root = self
            .tree_set
            .get(&self.name)
            .and_then(|tree| tree.root.as_ref())
            .ok_or_else(|| ExecError::IncompleteTemplate(self.name.clone()))?;
        state.walk(data, root)?;

        Ok(())
    }

    pub fn render(&self, data: &Context) -> Result<String, ExecError> {
        let mut w: Vec<u8> = vec![];
        self.execute(&mut w, data)?;
        String::from_utf8(w).map_err(ExecError::Utf8ConversionFailed)
    }
}

impl<'a, 'b, T: Write> State<'a, 'b, T> {
    /// Spends `units` of the step budget (runner patch).
    fn charge(&self, units: u64) -> Result<(), ExecError> {
        let limits = &self.template.limits;
        let before = self.budget.steps.get();
        let after = before.saturating_add(units);
        self.budget.steps.set(after);
        if after > limits.max_steps {
            return Err(ExecError::TooManySteps(limits.max_steps));
        }
        if let Some(deadline) = limits.deadline {
            if before >> 10 != after >> 10 && Instant::now() >= deadline {
                return Err(ExecError::DeadlineExceeded);
            }
        }
        Ok(())
    }

    /// Spends a step plus one per KiB of `v`, before `v` is copied.
    fn charge_value(&self, v: &Value) -> Result<(), ExecError> {
        self.charge(1 + (value_size(v) / 1024) as u64)
    }

    /// Sets the `n`th variable from the top of the stack, as Go's
    /// `setTopVar` (runner patch: Go indexes out of range where this errs).
    fn set_top_var(&mut self, n: usize, value: Value) -> Result<(), ExecError> {
        let i = self
            .vars
            .len()
            .checked_sub(n)
            .ok_or(ExecError::VarContextToSmall(n))?;
        self.vars[i].value = value;
        Ok(())
    }

    /// `$x = value`: updates the nearest declaration of `$x`, as Go's
    /// `setVar` (runner patch).
    fn set_var(&mut self, name: &str, value: Value) -> Result<(), ExecError> {
        match self.vars.iter_mut().rev().find(|v| v.name == name) {
            Some(var) => {
                var.value = value;
                Ok(())
            }
            None => Err(ExecError::UndefinedVariable(name.to_string())),
        }
    }

    fn var_value(&self, key: &str) -> Result<Value, ExecError> {
        for var in self.vars.iter().rev() {
            if var.name == key {
                self.charge_value(&var.value)?;
                return Ok(var.value.clone());
            }
        }
        Err(ExecError::VariableNotFound(key.to_string()))
    }

    fn walk_list(&mut self, ctx: &Context, node: &'a ListNode) -> Result<Flow, ExecError> {
        for n in &node.nodes {
            let flow = self.walk(ctx, n)?;
            if flow != Flow::Normal {
                return Ok(flow);
            }
        }
        Ok(Flow::Normal)
    }

    // Top level walk function. Steps through the major parts for the template strcuture and
    // writes to the output.
    fn walk(&mut self, ctx: &Context, node: &'a Nodes) -> Result<Flow, ExecError> {
        self.charge(1)?;
        self.node = Some(node);
        match *node {
            Nodes::Action(ref n) => {
                let val = self.eval_pipeline(ctx, &n.pipe)?;
                if n.pipe.decl.is_empty() {
                    self.print_value(&val)?;
                }
                Ok(Flow::Normal)
            }
            Nodes::If(_) | Nodes::With(_) => self.walk_if_or_with(node, ctx),
            Nodes::Range(ref n) => self.walk_range(ctx, n),
            Nodes::List(ref n) => self.walk_list(ctx, n),
            Nodes::Text(ref n) => write!(self.writer, "{}", n)
                .map(|()| Flow::Normal)
                .map_err(ExecError::IOError),
            Nodes::Template(ref n) => self.walk_template(ctx, n).map(|()| Flow::Normal),
            // runner patch: the parser allows these only inside a range.
            Nodes::Break(_) => Ok(Flow::Break),
            Nodes::Continue(_) => Ok(Flow::Continue),
            _ => Err(ExecError::UnknownNode(node.clone())),
        }
    }

    /// Walks `root` as a template called from a state at `depth`: a state
    /// of its own (no variables but `$`), one level deeper, sharing the
    /// budget. The caller has charged for `dot`.
    fn walk_called<W: Write>(
        template: &'a Template,
        depth: usize,
        budget: Rc<Budget>,
        writer: &mut W,
        root: &'a Nodes,
        dot: Value,
    ) -> Result<(), ExecError> {
        let mut state = State {
            template,
            writer,
            node: None,
            vars: vec![Variable {
                name: "$".to_owned(),
                value: dot.clone(),
            }],
            depth: depth + 1,
            budget,
        };
        // A break or continue cannot leave a template: the parser allows
        // them only inside a range of the same template.
        state.walk(&Context::from(dot), root).map(|_| ())
    }

    /// Refuses to call a template deeper than `max_template_depth`.
    fn check_depth(&self) -> Result<(), ExecError> {
        if self.depth >= self.template.limits.max_template_depth {
            return Err(ExecError::TemplateDepth(
                self.template.limits.max_template_depth,
            ));
        }
        Ok(())
    }

    fn walk_template(&mut self, ctx: &Context, template: &TemplateNode) -> Result<(), ExecError> {
        let name = match template.name {
            PipeOrString::String(ref name) => name.to_owned(),
            PipeOrString::Pipe(ref pipe) => {
                if let Value::String(s) = self.eval_pipeline(ctx, pipe)? {
                    s
                } else {
                    return Err(ExecError::PipelineMustYieldString);
                }
            }
        };
        self.check_depth()?;
        let tree = self.template.tree_set.get(&name);
        if let Some(tree) = tree {
            if let Some(ref root) = tree.root {
                let value = if let Some(ref pipe) = template.pipe {
                    self.eval_pipeline(ctx, pipe)?
                } else {
                    Value::NoValue
                };
                self.charge_value(&value)?;
                return Self::walk_called(
                    self.template,
                    self.depth,
                    self.budget.clone(),
                    &mut *self.writer,
                    root,
                    value,
                );
            }
        }
        Err(ExecError::TemplateNotDefined(name))
    }

    /// consul-template's `executeTemplate NAME [DATA]` (runner patch, when
    /// `Template::execute_template` is on): renders the named template with
    /// DATA (or nil) as dot and returns its output. It is bounded as a
    /// `{{template}}` call is (depth, the shared step budget) and its output
    /// as a value (`max_value_bytes`).
    fn eval_execute_template(
        &mut self,
        ctx: &Context,
        args: &[Nodes],
        fin: &Option<Value>,
    ) -> Result<Value, ExecError> {
        let mut vals = vec![];
        for arg in args.iter().skip(1) {
            vals.push(self.eval_arg(ctx, arg)?);
        }
        if let Some(ref f) = *fin {
            self.charge_value(f)?;
            vals.push(f.clone());
        }
        let fail = |msg: String| ExecError::FuncError(gtmpl_value::FuncError::Generic(msg));
        let (name, data) = match vals.split_first() {
            None => {
                return Err(fail(
                    "wrong number of args for executeTemplate: want at least 1 got 0".into(),
                ))
            }
            Some((Value::String(name), data)) => (name, data),
            Some((other, _)) => {
                return Err(fail(format!(
                    "expected string; found {}",
                    crate::print_verb::go_value(other)
                )))
            }
        };
        let dot = match data {
            [] => Value::Nil,
            [dot] => dot.clone(),
            _ => {
                return Err(fail(format!(
                    "error calling executeTemplate: executeTemplate: wrong number of arguments, expected 1 or 2, but got {}",
                    vals.len()
                )))
            }
        };
        self.check_depth()?;
        let root = self
            .template
            .tree_set
            .get(name.as_str())
            .and_then(|tree| tree.root.as_ref())
            .ok_or_else(|| {
                fail(format!(
                    "error calling executeTemplate: template: no template {} associated with template {}",
                    crate::print_verb::go_quote(name),
                    crate::print_verb::go_quote(&self.template.name)
                ))
            })?;
        let max = self.template.limits.max_value_bytes;
        let mut out = BoundedBuf {
            buf: vec![],
            max,
            budget: self.budget.clone(),
            overflow: None,
        };
        self.charge_value(&dot)?;
        let walked = Self::walk_called(
            self.template,
            self.depth,
            self.budget.clone(),
            &mut out,
            root,
            dot,
        );
        if let Some(size) = out.overflow {
            return Err(ExecError::ValueTooLarge {
                function: "executeTemplate".into(),
                size,
                max,
            });
        }
        walked?;
        Ok(Value::String(out.into_string()))
    }

    fn eval_pipeline(&mut self, ctx: &Context, pipe: &PipeNode) -> Result<Value, ExecError> {
        let mut val: Option<Value> = None;
        for cmd in &pipe.cmds {
            val = Some(self.eval_command(ctx, cmd, &val)?);
            // TODO
        }
        let val = val.ok_or_else(|| ExecError::ErrorEvaluatingPipe(pipe.clone()))?;
        for var in &pipe.decl {
            self.charge_value(&val)?;
            // runner patch: `$x = …` updates the nearest `$x` (Go 1.11).
            if pipe.is_assign {
                self.set_var(&var.ident[0], val.clone())?;
            } else {
                self.vars.push(Variable {
                    name: var.ident[0].clone(),
                    value: val.clone(),
                });
            }
        }
        Ok(val)
    }

    fn eval_command(
        &mut self,
        ctx: &Context,
        cmd: &CommandNode,
        val: &Option<Value>,
    ) -> Result<Value, ExecError> {
        self.charge(1)?;
        let first_word = &cmd
            .args
            .first()
            .ok_or_else(|| ExecError::NoArgsForCommandNode(cmd.clone()))?;

        match *(*first_word) {
            Nodes::Field(ref n) => return self.eval_field_node(ctx, n, &cmd.args, val),
            Nodes::Variable(ref n) => return self.eval_variable_node(n, &cmd.args, val),
            Nodes::Pipe(ref n) => return self.eval_pipeline(ctx, n),
            Nodes::Chain(ref n) => return self.eval_chain_node(ctx, n, &cmd.args, val),
            Nodes::Identifier(ref n) => return self.eval_function(ctx, n, &cmd.args, val),
            _ => {}
        }
        not_a_function(&cmd.args, val)?;
        match *(*first_word) {
            Nodes::Bool(ref n) => Ok(n.value.clone()),
            Nodes::Dot(_) => {
                self.charge_value(&ctx.dot)?;
                Ok(ctx.dot.clone())
            }
            Nodes::Number(ref n) => Ok(n.value.clone()),
            Nodes::String(ref n) => Ok(n.value.clone()),
            _ => Err(ExecError::CannotEvaluateCommand((*first_word).clone())),
        }
    }

    fn eval_function(
        &mut self,
        ctx: &Context,
        ident: &IdentifierNode,
        args: &[Nodes],
        fin: &Option<Value>,
    ) -> Result<Value, ExecError> {
        let name = &ident.ident;
        // runner patch: `executeTemplate` needs the executor, so it is a
        // builtin here (when enabled), ahead of any function of that name.
        let builtin_execute = self.template.execute_template && name == "executeTemplate";
        let function = match self.template.funcs.get(name.as_str()) {
            Some(f) => Some(*f),
            None if builtin_execute => None,
            None => return Err(ExecError::UndefinedFunction(name.to_string())),
        };
        // runner patch: Go's `and` and `or` stop at the first argument that
        // decides the result (Go 1.18); the rest are never evaluated.
        let value = match (name.as_str(), function) {
            ("executeTemplate", _) if builtin_execute => {
                self.eval_execute_template(ctx, args, fin)?
            }
            ("and", _) | ("or", _) => self.eval_and_or(ctx, name == "and", args, fin)?,
            (_, Some(function)) => self.eval_call(ctx, function, args, fin)?,
            (_, None) => return Err(ExecError::UndefinedFunction(name.to_string())),
        };
        let size = value_size(&value);
        if size > self.template.limits.max_value_bytes {
            return Err(ExecError::ValueTooLarge {
                function: name.to_string(),
                size,
                max: self.template.limits.max_value_bytes,
            });
        }
        self.charge_value(&value)?;
        Ok(value)
    }

    fn eval_and_or(
        &mut self,
        ctx: &Context,
        is_and: bool,
        args: &[Nodes],
        fin: &Option<Value>,
    ) -> Result<Value, ExecError> {
        let given = args.len().saturating_sub(1) + usize::from(fin.is_some());
        if given == 0 {
            let name = if is_and { "and" } else { "or" };
            return Err(ExecError::FuncError(gtmpl_value::FuncError::AtLeastXArgs(
                name.into(),
                1,
            )));
        }
        let mut last = Value::NoValue;
        for arg in args.iter().skip(1) {
            last = self.eval_arg(ctx, arg)?;
            if crate::utils::is_true(&last) != is_and {
                return Ok(last);
            }
        }
        if let Some(ref f) = *fin {
            self.charge_value(f)?;
            last = f.clone();
        }
        Ok(last)
    }

    fn eval_call(
        &mut self,
        ctx: &Context,
        function: Func,
        args: &[Nodes],
        fin: &Option<Value>,
    ) -> Result<Value, ExecError> {
        let mut arg_vals = vec![];
        if !args.is_empty() {
            for arg in &args[1..] {
                let val = self.eval_arg(ctx, arg)?;
                arg_vals.push(val);
            }
        }
        if let Some(ref f) = *fin {
            self.charge_value(f)?;
            arg_vals.push(f.clone());
        }

        function(&arg_vals).map_err(Into::into)
    }

    fn eval_chain_node(
        &mut self,
        ctx: &Context,
        chain: &ChainNode,
        args: &[Nodes],
        fin: &Option<Value>,
    ) -> Result<Value, ExecError> {
        if chain.field.is_empty() {
            return Err(ExecError::NoFieldsInEvalChainNode);
        }
        if let Nodes::Nil(_) = *chain.node {
            return Err(ExecError::NullInChain(chain.clone()));
        }
        let pipe = self.eval_arg(ctx, &*chain.node)?;
        self.eval_field_chain(&pipe, &chain.field, args, fin)
    }

    fn eval_arg(&mut self, ctx: &Context, node: &Nodes) -> Result<Value, ExecError> {
        self.charge(1)?;
        match *node {
            Nodes::Dot(_) => {
                self.charge_value(&ctx.dot)?;
                Ok(ctx.dot.clone())
            }
            //Nodes::Nil
            Nodes::Field(ref n) => self.eval_field_node(ctx, n, &[], &None), // args?
            Nodes::Variable(ref n) => self.eval_variable_node(n, &[], &None),
            Nodes::Pipe(ref n) => self.eval_pipeline(ctx, n),
            // Nodes::Identifier
            Nodes::Identifier(ref n) => self.eval_function(ctx, n, &[], &None),
            Nodes::Chain(ref n) => self.eval_chain_node(ctx, n, &[], &None),
            Nodes::String(ref n) => Ok(n.value.clone()),
            Nodes::Bool(ref n) => Ok(n.value.clone()),
            Nodes::Number(ref n) => Ok(n.value.clone()),
            _ => Err(ExecError::InvalidArgument(node.clone())),
        }
    }

    fn eval_field_node(
        &mut self,
        ctx: &Context,
        field: &FieldNode,
        args: &[Nodes],
        fin: &Option<Value>,
    ) -> Result<Value, ExecError> {
        self.eval_field_chain(&ctx.dot, &field.ident, args, fin)
    }

    fn eval_field_chain(
        &mut self,
        receiver: &Value,
        ident: &[String],
        args: &[Nodes],
        fin: &Option<Value>,
    ) -> Result<Value, ExecError> {
        let n = ident.len();
        if n < 1 {
            return Err(ExecError::FieldChainWithoutFields);
        }
        // TODO clean shit up
        let mut r: Value = Value::from(0);
        for (i, id) in ident.iter().enumerate().take(n - 1) {
            r = self.eval_field(if i == 0 { receiver } else { &r }, id, &[], &None)?;
        }
        self.eval_field(if n == 1 { receiver } else { &r }, &ident[n - 1], args, fin)
    }

    fn eval_field(
        &mut self,
        receiver: &Value,
        field_name: &str,
        args: &[Nodes],
        fin: &Option<Value>,
    ) -> Result<Value, ExecError> {
        let has_args = args.len() > 1 || fin.is_some();
        if has_args {
            return Err(ExecError::NotAFunctionButArguments(field_name.to_string()));
        }
        if let Value::Object(ref o) | Value::Map(ref o) = *receiver {
            if let Some(v) = o.get(field_name) {
                self.charge_value(v)?;
            }
        }
        let ret = match *receiver {
            Value::Object(ref o) => o
                .get(field_name)
                .cloned()
                .ok_or_else(|| ExecError::NoFiledFor(field_name.to_string(), receiver.clone())),
            // runner patch: a missing key is the zero value of the map's
            // element type, as Go (with consul-template's missingkey=zero)
            // gives it; see `crate::utils::missing_map_value`.
            Value::Map(ref o) => Ok(o
                .get(field_name)
                .cloned()
                .unwrap_or_else(|| crate::utils::missing_map_value(o))),
            // runner patch: a field of nothing is nothing, as in Go.
            Value::Nil | Value::NoValue => Ok(Value::NoValue),
            _ => Err(ExecError::OnlyMapsAndObjectsHaveFields),
        };
        if let Ok(Value::Function(ref f)) = ret {
            return (f.f)(&[receiver.clone()]).map_err(Into::into);
        }
        ret
    }

    fn eval_variable_node(
        &mut self,
        variable: &VariableNode,
        args: &[Nodes],
        fin: &Option<Value>,
    ) -> Result<Value, ExecError> {
        let val = self.var_value(&variable.ident[0])?;
        if variable.ident.len() == 1 {
            not_a_function(args, fin)?;
            return Ok(val);
        }
        self.eval_field_chain(&val, &variable.ident[1..], args, fin)
    }

    // Walks an `if` or `with` node. They behave the same, except that `with` sets dot.
    // runner patch: variables declared in it (its pipeline included) end
    // at its `{{end}}`, as in Go; a break or continue in it is passed on.
    fn walk_if_or_with(&mut self, node: &'a Nodes, ctx: &Context) -> Result<Flow, ExecError> {
        let mark = self.vars.len();
        let flow = self.walk_if_or_with_body(node, ctx);
        self.vars.truncate(mark);
        flow
    }

    fn walk_if_or_with_body(&mut self, node: &'a Nodes, ctx: &Context) -> Result<Flow, ExecError> {
        let pipe = match *node {
            Nodes::If(ref n) | Nodes::With(ref n) => &n.pipe,
            _ => return Err(ExecError::ExpectedIfOrWith(node.clone())),
        };
        let val = self.eval_pipeline(ctx, pipe)?;
        let truth = is_true(&val);
        if truth {
            match *node {
                Nodes::If(ref n) => self.walk_list(ctx, &n.list),
                Nodes::With(ref n) => {
                    let ctx = Context { dot: val };
                    self.walk_list(&ctx, &n.list)
                }
                _ => Ok(Flow::Normal),
            }
        } else {
            match *node {
                Nodes::If(ref n) | Nodes::With(ref n) => match n.else_list {
                    Some(ref otherwise) => self.walk_list(ctx, otherwise),
                    None => Ok(Flow::Normal),
                },
                _ => Ok(Flow::Normal),
            }
        }
    }

    /// One pass of a range's body; `mark` is the variable stack as the
    /// range's pipeline left it (runner patch: as Go's `oneIteration`, the
    /// body's declarations end with the pass, and a `{{continue}}` ends it).
    fn one_iteration(
        &mut self,
        key: Value,
        val: Value,
        range: &'a RangeNode,
        mark: usize,
    ) -> Result<Flow, ExecError> {
        self.charge_value(&val)?;
        if !range.pipe.decl.is_empty() {
            self.set_top_var(1, val.clone())?;
        }
        if range.pipe.decl.len() > 1 {
            self.set_top_var(2, key)?;
        }
        let ctx = Context { dot: val };
        let flow = self.walk_list(&ctx, &range.list)?;
        self.vars.truncate(mark);
        Ok(flow)
    }

    // runner patch: the range's variables end at its `{{end}}`, and a
    // `{{break}}` in its body ends it.
    fn walk_range(&mut self, ctx: &Context, range: &'a RangeNode) -> Result<Flow, ExecError> {
        let mark = self.vars.len();
        let walked = self.walk_range_body(ctx, range);
        self.vars.truncate(mark);
        walked
    }

    fn walk_range_body(&mut self, ctx: &Context, range: &'a RangeNode) -> Result<Flow, ExecError> {
        let val = self.eval_pipeline(ctx, &range.pipe)?;
        let mark = self.vars.len();
        // runner patch: the else branch runs only when there was nothing to
        // range over (gtmpl ran it always), and maps are walked in sorted
        // key order, as Go does (gtmpl walked a HashMap's order).
        let empty = match val {
            Value::Object(ref map) | Value::Map(ref map) => {
                self.charge_value(&val)?;
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let entries: Vec<(String, Value)> = entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, v) in entries {
                    if self.one_iteration(Value::from(k), v, range, mark)? == Flow::Break {
                        break;
                    }
                }
                map.is_empty()
            }
            Value::Array(ref vec) => {
                for (k, v) in vec.iter().enumerate() {
                    self.charge_value(v)?;
                    if self.one_iteration(Value::from(k), v.clone(), range, mark)? == Flow::Break {
                        break;
                    }
                }
                vec.is_empty()
            }
            // Go ranges over nothing for a nil value.
            Value::Nil | Value::NoValue => true,
            _ => return Err(ExecError::InvalidRange(val)),
        };
        if let (true, Some(else_list)) = (empty, range.else_list.as_ref()) {
            // A break or continue in the else branch belongs to an enclosing
            // range. As in Go (where this range recovers its walkBreak
            // panic), a break ends only this else branch, while a continue
            // goes on to the enclosing range.
            return match self.walk_list(ctx, else_list)? {
                Flow::Break => Ok(Flow::Normal),
                flow => Ok(flow),
            };
        }
        Ok(Flow::Normal)
    }

    fn print_value(&mut self, val: &Value) -> Result<(), ExecError> {
        self.charge_value(val)?;
        // runner patch: as Go prints it (`[a b]`, not `[String("a")]`).
        // A nil interface prints as Go's invalid value does.
        let text = match val {
            Value::Nil => "<no value>".to_string(),
            other => crate::print_verb::go_value(other),
        };
        write!(self.writer, "{}", text).map_err(ExecError::IOError)?;
        Ok(())
    }
}

fn not_a_function(args: &[Nodes], val: &Option<Value>) -> Result<(), ExecError> {
    if args.len() > 1 || val.is_some() {
        return Err(ExecError::ArgumentForNonFunction(args[0].clone()));
    }
    Ok(())
}

// runner patch: upstream's tests need `gtmpl_derive`, which is not
// vendored; the `gtmpl_derive` cfg is never set, so they are kept but not
// built (`tests/go_semantics.rs` tests this crate).
#[cfg(all(test, gtmpl_derive))]
mod tests_mocked {
    use super::*;
    use anyhow::anyhow;
    use gtmpl_derive::Gtmpl;
    use gtmpl_value::FuncError;
    use std::collections::HashMap;

    #[test]
    fn simple_template() {
        let data = Context::from(1);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ if false }} 2000 {{ end }}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "");

        let data = Context::from(1);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ if true }} 2000 {{ end }}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), " 2000 ");

        let data = Context::from(1);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ if true -}} 2000 {{- end }}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "2000");

        let data = Context::from(1);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ if false -}} 2000 {{- else -}} 3000 {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "3000");
    }

    #[test]
    fn test_dot() {
        let data = Context::from(1);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ if . -}} 2000 {{- else -}} 3000 {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "2000");

        let data = Context::from(false);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ if . -}} 2000 {{- else -}} 3000 {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "3000");
    }

    #[test]
    fn test_sub() {
        let data = Context::from(1u8);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{.}}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "1");

        #[derive(Gtmpl)]
        struct Foo {
            foo: u8,
        }
        let f = Foo { foo: 1 };
        let data = Context::from(f);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{.foo}}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "1");
    }

    #[test]
    fn test_novalue() {
        #[derive(Gtmpl)]
        struct Foo {
            foo: u8,
        }
        let f = Foo { foo: 1 };
        let data = Context::from(f);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{.foobar}}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_err());

        let map: HashMap<String, u64> = [("foo".to_owned(), 23u64)].iter().cloned().collect();
        let data = Context::from(map);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{.foo2}}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), Value::NoValue.to_string());
    }

    #[test]
    fn test_dollar_dot() {
        #[derive(Gtmpl, Clone)]
        struct Foo {
            foo: u8,
        }
        let data = Context::from(Foo { foo: 1u8 });
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{$.foo}}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "1");
    }

    #[test]
    fn test_function_via_dot() {
        #[derive(Gtmpl)]
        struct Foo {
            foo: Func,
        }
        fn foo(_: &[Value]) -> Result<Value, FuncError> {
            Ok(Value::from("foobar"))
        }
        let data = Context::from(Foo { foo });
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{.foo}}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "foobar");

        fn plus_one(args: &[Value]) -> Result<Value, FuncError> {
            if let Value::Object(ref o) = &args[0] {
                if let Some(Value::Number(ref n)) = o.get("num") {
                    if let Some(i) = n.as_i64() {
                        return Ok((i + 1).into());
                    }
                }
            }
            Err(anyhow!("integer required, got: {:?}", args).into())
        }

        #[derive(Gtmpl)]
        struct AddMe {
            num: u8,
            plus_one: Func,
        }
        let data = Context::from(AddMe { num: 42, plus_one });
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{.plus_one}}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "43");
    }

    #[test]
    fn test_function_ret_map() {
        fn map(_: &[Value]) -> Result<Value, FuncError> {
            let mut h = HashMap::new();
            h.insert("field".to_owned(), 1);
            Ok(h.into())
        }

        let data = Context::empty();
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        t.add_func("map", map);
        assert!(t.parse(r#"{{map.field}}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "1");
    }

    #[test]
    fn test_dot_value() {
        #[derive(Gtmpl, Clone)]
        struct Foo {
            foo: u8,
        }
        #[derive(Gtmpl)]
        struct Bar {
            bar: Foo,
        }
        let f = Foo { foo: 1 };
        let data = Context::from(f);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ if .foo -}} 2000 {{- else -}} 3000 {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "2000");

        let f = Foo { foo: 0 };
        let data = Context::from(f);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ if .foo -}} 2000 {{- else -}} 3000 {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "3000");

        let bar = Bar {
            bar: Foo { foo: 1 },
        };
        let data = Context::from(bar);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ if .bar.foo -}} 2000 {{- else -}} 3000 {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "2000");

        let bar = Bar {
            bar: Foo { foo: 0 },
        };
        let data = Context::from(bar);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ if .bar.foo -}} 2000 {{- else -}} 3000 {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "3000");
    }

    #[test]
    fn test_with() {
        #[derive(Gtmpl)]
        struct Foo {
            foo: u16,
        }
        let f = Foo { foo: 1000 };
        let data = Context::from(f);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ with .foo -}} {{.}} {{- else -}} 3000 {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "1000");
    }

    fn to_sorted_string(buf: Vec<u8>) -> String {
        let mut chars: Vec<char> = String::from_utf8(buf).unwrap().chars().collect();
        chars.sort_unstable();
        chars.iter().cloned().collect::<String>()
    }

    #[test]
    fn test_range() {
        let mut map = HashMap::new();
        map.insert("a".to_owned(), 1);
        map.insert("b".to_owned(), 2);
        let data = Context::from(map);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ range . -}} {{.}} {{- end }}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(to_sorted_string(w), "12");

        let vec = vec!["foo", "bar", "2000"];
        let data = Context::from(vec);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ range . -}} {{.}} {{- end }}"#).is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "foobar2000");
    }

    #[test]
    fn test_proper_range() {
        let vec = vec!["a".to_string(), "b".to_string()];
        let data = Context::from(vec);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ range $k, $v := . -}} {{ $k }}{{ $v }} {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "0a1b");

        let mut map = HashMap::new();
        map.insert("a".to_owned(), 1);
        map.insert("b".to_owned(), 2);
        let data = Context::from(map);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ range $k, $v := . -}} {{ $v }} {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(to_sorted_string(w), "12");

        let mut map = HashMap::new();
        map.insert("a".to_owned(), "b");
        map.insert("c".to_owned(), "d");
        let data = Context::from(map);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ range $k, $v := . -}} {{ $k }}{{ $v }} {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(to_sorted_string(w), "abcd");

        let mut map = HashMap::new();
        map.insert("a".to_owned(), 1);
        map.insert("b".to_owned(), 2);
        let data = Context::from(map);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ range $k, $v := . -}} {{ $k }}{{ $v }} {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(to_sorted_string(w), "12ab");

        let mut map = HashMap::new();
        map.insert("a".to_owned(), 1);
        map.insert("b".to_owned(), 2);
        #[derive(Gtmpl)]
        struct Foo {
            foo: HashMap<String, i32>,
        }
        let f = Foo { foo: map };
        let data = Context::from(f);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ range $k, $v := .foo -}} {{ $v }} {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(to_sorted_string(w), "12");

        let mut map = HashMap::new();
        #[derive(Gtmpl, Clone)]
        struct Bar {
            bar: i32,
        }
        map.insert("a".to_owned(), Bar { bar: 1 });
        map.insert("b".to_owned(), Bar { bar: 2 });
        let data = Context::from(map);
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ range $k, $v := . -}} {{ $v.bar }} {{- end }}"#)
            .is_ok());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(to_sorted_string(w), "12");
    }

    #[test]
    fn test_len() {
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"my len is {{ len . }}"#).is_ok());
        let data = Context::from(vec![1, 2, 3]);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "my len is 3");

        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ len . }}"#).is_ok());
        let data = Context::from("hello".to_owned());
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "5");
    }

    #[test]
    fn test_pipeline_function() {
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ if ( 1 | eq . ) -}} 2000 {{- end }}"#).is_ok());
        let data = Context::from(1);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "2000");
    }

    #[test]
    fn test_function() {
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ if eq . . -}} 2000 {{- end }}"#).is_ok());
        let data = Context::from(1);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "2000");
    }

    #[test]
    fn test_eq() {
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ if eq "a" "a" -}} 2000 {{- end }}"#).is_ok());
        let data = Context::from(1);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "2000");

        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ if eq "a" "b" -}} 2000 {{- end }}"#).is_ok());
        let data = Context::from(1);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "");

        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ if eq true true -}} 2000 {{- end }}"#).is_ok());
        let data = Context::from(1);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "2000");

        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ if eq true false -}} 2000 {{- end }}"#)
            .is_ok());
        let data = Context::from(1);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "");

        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ if eq 23.42 23.42 -}} 2000 {{- end }}"#)
            .is_ok());
        let data = Context::from(1);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "2000");

        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t.parse(r#"{{ if eq 1 . -}} 2000 {{- end }}"#).is_ok());
        let data = Context::from(1);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "2000");
    }

    #[test]
    fn test_block() {
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ block "foobar" true -}} {{ $ }} {{- end }}"#)
            .is_ok());
        let data = Context::from(2000);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "true");
    }

    #[test]
    fn test_assign_string() {
        let mut w: Vec<u8> = vec![];
        let mut t = Template::default();
        assert!(t
            .parse(r#"{{ with $foo := "bar" }}{{ $foo }}{{ end }}"#)
            .is_ok());
        let data = Context::from(1);
        let out = t.execute(&mut w, &data);
        assert!(out.is_ok());
        assert_eq!(String::from_utf8(w).unwrap(), "bar");
    }
}
