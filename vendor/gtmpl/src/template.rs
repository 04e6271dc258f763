use std::collections::HashMap;

use crate::error::{ParseError, TemplateError};
use crate::exec::Limits;
use crate::funcs::BUILTINS;
use crate::parse::{parse, Tree};

use gtmpl_value::Func;

/// The main template structure.
pub struct Template {
    pub name: String,
    pub text: String,
    pub funcs: HashMap<String, Func>,
    pub tree_set: HashMap<String, Tree>,
    /// Bounds on parsing and executing (runner patch).
    pub limits: Limits,
    /// Whether templates may call consul-template's `executeTemplate NAME
    /// [DATA]` (runner patch, off by default; see
    /// [`Template::enable_execute_template`]). Set it before parsing.
    pub execute_template: bool,
}

impl Default for Template {
    fn default() -> Template {
        Template {
            name: String::default(),
            text: String::from(""),
            funcs: BUILTINS.iter().map(|&(k, v)| (k.to_owned(), v)).collect(),
            tree_set: HashMap::default(),
            limits: Limits::default(),
            execute_template: false,
        }
    }
}

impl Template {
    /// Creates a new empty template with a given `name`.
    pub fn with_name<T: Into<String>>(name: T) -> Template {
        Template {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Adds a single custom function to the template.
    ///
    /// ## Example
    ///
    /// ```rust
    /// use gtmpl::{Context, Func, FuncError, Value};
    ///
    /// fn hello_world(_args: &[Value]) -> Result<Value, FuncError> {
    ///   Ok(Value::from("Hello World!"))
    /// }
    ///
    /// let mut tmpl = gtmpl::Template::default();
    /// tmpl.add_func("helloWorld", hello_world);
    /// tmpl.parse("{{ helloWorld }}").unwrap();
    /// let output = tmpl.render(&Context::empty());
    /// assert_eq!(&output.unwrap(), "Hello World!");
    /// ```
    pub fn add_func(&mut self, name: &str, func: Func) {
        self.funcs.insert(name.to_owned(), func);
    }

    /// Adds custom functions to the template.
    ///
    /// ## Example
    ///
    /// ```rust
    /// use std::collections::HashMap;
    ///
    /// use gtmpl::{Context, Func, FuncError, Value};
    ///
    /// fn hello_world(_args: &[Value]) -> Result<Value, FuncError> {
    ///   Ok(Value::from("Hello World!"))
    /// }
    ///
    /// let funcs = vec![("helloWorld", hello_world as Func)];
    /// let mut tmpl = gtmpl::Template::default();
    /// tmpl.add_funcs(&funcs);
    /// tmpl.parse("{{ helloWorld }}").unwrap();
    /// let output = tmpl.render(&Context::empty());
    /// assert_eq!(&output.unwrap(), "Hello World!");
    /// ```
    pub fn add_funcs<T: Into<String> + Clone>(&mut self, funcs: &[(T, Func)]) {
        self.funcs
            .extend(funcs.iter().cloned().map(|(k, v)| (k.into(), v)));
    }

    /// Lets templates call consul-template's `executeTemplate NAME [DATA]`
    /// (runner patch): it renders the template NAME (a `define` or `block`)
    /// with DATA as dot (nil without it) and returns the output as a string.
    /// It is a builtin of the executor, ahead of any function added under
    /// that name, and is bounded as `{{template}}` is: it counts towards
    /// `limits.max_template_depth` and the step budget, and its output
    /// towards `limits.max_value_bytes`. Call it before [`Template::parse`].
    ///
    /// ## Example
    ///
    /// ```rust
    /// use gtmpl::Context;
    ///
    /// let mut tmpl = gtmpl::Template::default();
    /// tmpl.enable_execute_template();
    /// tmpl.parse(r#"{{define "t"}}<{{.}}>{{end}}{{executeTemplate "t" "x" | len}}"#)
    ///     .unwrap();
    /// assert_eq!(tmpl.render(&Context::empty()).unwrap(), "3");
    /// ```
    pub fn enable_execute_template(&mut self) -> &mut Self {
        self.execute_template = true;
        self
    }

    /// The function names the parser accepts (runner patch: with the
    /// executor's own `executeTemplate` when enabled).
    fn func_names(&self) -> std::collections::HashSet<String> {
        let mut names: std::collections::HashSet<String> = self.funcs.keys().cloned().collect();
        if self.execute_template {
            names.insert("executeTemplate".to_string());
        }
        names
    }

    /// Parse the given `text` as template body.
    ///
    /// ## Example
    ///
    /// ```rust
    /// let mut tmpl = gtmpl::Template::default();
    /// tmpl.parse("Hello World!").unwrap();
    /// ```
    pub fn parse<T: Into<String>>(&mut self, text: T) -> Result<(), ParseError> {
        let tree_set = parse(
            self.name.clone(),
            text.into(),
            self.func_names(),
            self.limits.max_syntax_nesting,
        )?;
        self.tree_set.extend(tree_set);
        Ok(())
    }

    /// Add the given `text` as a template with a `name`.
    ///
    /// ## Example
    ///
    /// ```rust
    /// use gtmpl::Context;
    ///
    /// let mut tmpl = gtmpl::Template::default();
    /// tmpl.add_template("fancy", "{{ . }}");
    /// tmpl.parse(r#"{{ template "fancy" . }}!"#).unwrap();
    /// let output = tmpl.render(&Context::from("Hello World"));
    /// assert_eq!(&output.unwrap(), "Hello World!");
    /// ```
    pub fn add_template<N: Into<String>, T: Into<String>>(
        &mut self,
        name: N,
        text: T,
    ) -> Result<(), TemplateError> {
        let tree_set = parse(
            name.into(),
            text.into(),
            self.func_names(),
            self.limits.max_syntax_nesting,
        )?;
        self.tree_set.extend(tree_set);
        Ok(())
    }
}

#[cfg(test)]
mod tests_mocked {
    use super::*;

    #[test]
    fn test_parse() {
        let mut t = Template::with_name("foo");
        assert!(t.parse(r#"{{ if eq "bar" "bar" }} 2000 {{ end }}"#).is_ok());
        assert!(t.tree_set.contains_key("foo"));
    }
}
