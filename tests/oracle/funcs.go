package main

// Pure helper functions, rewritten from consul-template's template/funcs.go
// with the standard library only. Each keeps consul-template's argument order
// (pipe-friendly: the piped value comes last) and its error messages
// (github.com/pkg/errors.Wrap(err, msg) prints as "msg: err").

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"unicode"
)

func wrap(err error, msg string) error { return fmt.Errorf("%s: %w", msg, err) }

// executeTemplateFunc is consul-template's executeTemplateFunc.
func executeTemplateFunc(t *template.Template) func(string, ...interface{}) (string, error) {
	return func(s string, data ...interface{}) (string, error) {
		var dot interface{}
		switch len(data) {
		case 0:
			dot = nil
		case 1:
			dot = data[0]
		default:
			return "", fmt.Errorf("executeTemplate: wrong number of arguments, expected 1 or 2"+
				", but got %d", len(data)+1)
		}
		var b bytes.Buffer
		if err := t.ExecuteTemplate(&b, s, dot); err != nil {
			return "", err
		}
		return b.String(), nil
	}
}

// plugin is refused by runner (consul-template's `denied`).
func plugin(name string, args ...string) (string, error) {
	return "", fmt.Errorf("function is disabled")
}

func base64Decode(s string) (string, error) {
	v, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "", wrap(err, "base64Decode")
	}
	return string(v), nil
}

func base64Encode(s string) (string, error) {
	return base64.StdEncoding.EncodeToString([]byte(s)), nil
}

func base64URLDecode(s string) (string, error) {
	v, err := base64.URLEncoding.DecodeString(s)
	if err != nil {
		return "", wrap(err, "base64URLDecode")
	}
	return string(v), nil
}

func base64URLEncode(s string) (string, error) {
	return base64.URLEncoding.EncodeToString([]byte(s)), nil
}

// byKey maps the top-level key to its sub-pairs, the top part stripped.
func byKey(pairs []*KeyPair) (map[string]map[string]*KeyPair, error) {
	m := make(map[string]map[string]*KeyPair)
	for _, pair := range pairs {
		parts := strings.Split(pair.Key, "/")
		top := parts[0]
		key := strings.Join(parts[1:], "/")
		if key == "" {
			continue
		}
		if _, ok := m[top]; !ok {
			m[top] = make(map[string]*KeyPair)
		}
		newPair := *pair
		newPair.Key = key
		m[top][key] = &newPair
	}
	return m, nil
}

// byTag groups services (health or catalog) by tag.
func byTag(in interface{}) (map[string][]interface{}, error) {
	m := make(map[string][]interface{})
	switch typed := in.(type) {
	case nil:
	case []*CatalogSnippet:
		for _, s := range typed {
			for _, t := range s.Tags {
				m[t] = append(m[t], s)
			}
		}
	case []*HealthService:
		for _, s := range typed {
			for _, t := range s.Tags {
				m[t] = append(m[t], s)
			}
		}
	default:
		return nil, fmt.Errorf("byTag: wrong argument type %T", in)
	}
	return m, nil
}

// byMeta groups services by one or more ServiceMeta fields.
func byMeta(meta string, services []*HealthService) (map[string][]*HealthService, error) {
	re := regexp.MustCompile("[^a-zA-Z0-9_-]")
	normalize := func(x string) string { return re.ReplaceAllString(x, "_") }
	getOrDefault := func(m map[string]string, key string) string {
		realKey := strings.TrimSuffix(key, "|int")
		if val := m[realKey]; val != "" {
			return val
		}
		if strings.HasSuffix(key, "|int") {
			return "0"
		}
		return fmt.Sprintf("_no_%s_", realKey)
	}
	metas := strings.Split(meta, ",")
	groups := make(map[string][]*HealthService)
	for _, s := range services {
		keyParts := []string{}
		for _, meta := range metas {
			value := getOrDefault(s.ServiceMeta, meta)
			if strings.HasSuffix(meta, "|int") {
				i, err := strconv.Atoi(value)
				if err != nil {
					return nil, wrap(err, fmt.Sprintf("cannot parse %v as number ", value))
				}
				value = fmt.Sprintf("%05d", i)
			}
			keyParts = append(keyParts, normalize(value))
		}
		key := strings.Join(keyParts, "_")
		groups[key] = append(groups[key], s)
	}
	return groups, nil
}

func contains(v, l interface{}) (bool, error) { return in(l, v) }

// containsSomeFunc builds containsAll, containsAny, containsNone and
// containsNotAll. Note the first argument must be a []interface{}.
func containsSomeFunc(retTrue, invert bool) func([]interface{}, interface{}) (bool, error) {
	return func(v []interface{}, l interface{}) (bool, error) {
		for i := 0; i < len(v); i++ {
			if ok, _ := in(l, v[i]); ok != invert {
				return !retTrue, nil
			}
		}
		return retTrue, nil
	}
}

// explode expands key pairs into a nested map.
func explode(pairs []*KeyPair) (map[string]interface{}, error) {
	m := make(map[string]interface{})
	for _, pair := range pairs {
		if err := explodeHelper(m, pair.Key, pair.Value, pair.Key); err != nil {
			return nil, wrap(err, "explode")
		}
	}
	return m, nil
}

func explodeHelper(m map[string]interface{}, k string, v interface{}, p string) error {
	if strings.Contains(k, "/") {
		parts := strings.Split(k, "/")
		top := parts[0]
		key := strings.Join(parts[1:], "/")
		if _, ok := m[top]; !ok {
			m[top] = make(map[string]interface{})
		}
		nest, ok := m[top].(map[string]interface{})
		if !ok {
			return fmt.Errorf("not a map: %q: %q already has value %q", p, top, m[top])
		}
		return explodeHelper(nest, key, v, k)
	}
	if k != "" {
		m[k] = v
	}
	return nil
}

// in reports whether v is in the list l, or is a substring of the string l.
func in(l, v interface{}) (bool, error) {
	lv := reflect.ValueOf(l)
	vv := reflect.ValueOf(v)
	switch lv.Kind() {
	case reflect.Array, reflect.Slice:
		var interfaceSlice []interface{}
		if reflect.TypeOf(l).Elem().Kind() == reflect.Interface {
			interfaceSlice = l.([]interface{})
		}
		for i := 0; i < lv.Len(); i++ {
			var lvv reflect.Value
			if interfaceSlice != nil {
				lvv = reflect.ValueOf(interfaceSlice[i])
			} else {
				lvv = lv.Index(i)
			}
			switch lvv.Kind() {
			case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
				switch vv.Kind() {
				case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
					if vv.Int() == lvv.Int() {
						return true, nil
					}
				}
			case reflect.Float32, reflect.Float64:
				switch vv.Kind() {
				case reflect.Float32, reflect.Float64:
					if vv.Float() == lvv.Float() {
						return true, nil
					}
				}
			case reflect.String:
				if vv.Type() == lvv.Type() && vv.String() == lvv.String() {
					return true, nil
				}
			}
		}
	case reflect.String:
		if vv.Type() == lv.Type() && strings.Contains(lv.String(), vv.String()) {
			return true, nil
		}
	}
	return false, nil
}

// indent prefixes each non-empty line with the given number of spaces.
func indent(spaces int, s string) (string, error) {
	if spaces < 0 {
		return "", fmt.Errorf("indent value must be a positive integer")
	}
	var output []byte
	prefix := []byte(strings.Repeat(" ", spaces))
	sp := true
	for _, c := range []byte(s) {
		if sp && c != '\n' {
			output = append(output, prefix...)
		}
		output = append(output, c)
		sp = c == '\n'
	}
	return string(output), nil
}

// loop yields start..stop-1 over a channel, as consul-template does.
func loop(ifaces ...interface{}) (<-chan int64, error) {
	to64 := func(i interface{}) (int64, error) {
		v := reflect.ValueOf(i)
		switch v.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			return v.Int(), nil
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			return int64(v.Uint()), nil
		case reflect.String:
			return parseInt(v.String())
		}
		return 0, fmt.Errorf("loop: bad argument type: %T", i)
	}
	var i1, i2 interface{}
	switch len(ifaces) {
	case 1:
		i1, i2 = 0, ifaces[0]
	case 2:
		i1, i2 = ifaces[0], ifaces[1]
	default:
		return nil, fmt.Errorf("loop: wrong number of arguments, expected "+
			"1 or 2, but got %d", len(ifaces))
	}
	start, err := to64(i1)
	if err != nil {
		return nil, err
	}
	stop, err := to64(i2)
	if err != nil {
		return nil, err
	}
	ch := make(chan int64)
	go func() {
		for i := start; i < stop; i++ {
			ch <- i
		}
		close(ch)
	}()
	return ch, nil
}

func join(sep string, a []string) (string, error) { return strings.Join(a, sep), nil }

func split(sep, s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return []string{}, nil
	}
	return strings.Split(s, sep), nil
}

func trim(cutset string, s string) (string, error) { return strings.Trim(s, cutset), nil }

func trimPrefix(prefix string, s string) (string, error) { return strings.TrimPrefix(s, prefix), nil }

func trimSuffix(suffix string, s string) (string, error) { return strings.TrimSuffix(s, suffix), nil }

func trimSpace(s string) (string, error) { return strings.TrimSpace(s), nil }

func parseBool(s string) (bool, error) {
	if s == "" {
		return false, nil
	}
	result, err := strconv.ParseBool(s)
	if err != nil {
		return false, wrap(err, "parseBool")
	}
	return result, nil
}

func parseFloat(s string) (float64, error) {
	if s == "" {
		return 0.0, nil
	}
	result, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, wrap(err, "parseFloat")
	}
	return result, nil
}

func parseInt(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	result, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, wrap(err, "parseInt")
	}
	return result, nil
}

func parseJSON(s string) (interface{}, error) {
	if s == "" {
		return map[string]interface{}{}, nil
	}
	var data interface{}
	if err := json.Unmarshal([]byte(s), &data); err != nil {
		return nil, err
	}
	return data, nil
}

func parseUint(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	result, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, wrap(err, "parseUint")
	}
	return result, nil
}

func replaceAll(f, t, s string) (string, error) { return strings.ReplaceAll(s, f, t), nil }

func regexReplaceAll(re, pl, s string) (string, error) {
	compiled, err := regexp.Compile(re)
	if err != nil {
		return "", err
	}
	return compiled.ReplaceAllString(s, pl), nil
}

func regexMatch(re, s string) (bool, error) {
	compiled, err := regexp.Compile(re)
	if err != nil {
		return false, err
	}
	return compiled.MatchString(s), nil
}

func sha256Hex(item string) (string, error) {
	h := sha256.Sum256([]byte(item))
	return hex.EncodeToString(h[:]), nil
}

func md5sum(item string) (string, error) { return fmt.Sprintf("%x", md5.Sum([]byte(item))), nil }

func toLower(s string) (string, error) { return strings.ToLower(s), nil }

func toUpper(s string) (string, error) { return strings.ToUpper(s), nil }

func toJSON(i interface{}) (string, error) {
	result, err := json.Marshal(i)
	if err != nil {
		return "", wrap(err, "toJSON")
	}
	return strings.TrimSpace(string(result)), nil
}

func toJSONPretty(m interface{}) (string, error) {
	result, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return "", wrap(err, "toJSONPretty")
	}
	return strings.TrimSpace(string(result)), nil
}

// toTitle approximates cases.Title(language.Und, cases.NoLower) from
// golang.org/x/text: the first cased letter of each word is title-cased and
// everything else is left alone. Words follow x/text's simplified Unicode
// word breaking: letters, digits, marks and connector punctuation ('_')
// continue a word; one MidLetter/MidNumLet/Single_Quote character (full
// stop, colon, apostrophe, ...) continues it too, two in a row end it; anything else
// (space, '-', '/', ...) ends it.
func toTitle(s string) (string, error) {
	var b strings.Builder
	midWord, prevMid := false, false
	for _, r := range s {
		mid := strings.ContainsRune(".:'·‘’․﹒＇．︓﹕：״‧", r)
		if prevMid && mid {
			midWord = false
		}
		switch {
		case unicode.IsUpper(r) || unicode.IsLower(r) || unicode.IsTitle(r):
			if !midWord {
				r = unicode.ToTitle(r)
				midWord = true
			}
		case mid || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsNumber(r) ||
			unicode.IsMark(r) || unicode.Is(unicode.Pc, r) || unicode.Is(unicode.Cf, r):
			// not a word break
		default:
			midWord = false
		}
		b.WriteRune(r)
		prevMid = mid
	}
	return b.String(), nil
}

// Math helpers: `add B A` is A + B, so `{{ 10 | subtract 2 }}` is 8.

type numKind int

const (
	kOther numKind = iota
	kInt
	kUint
	kFloat
)

func kindOf(v reflect.Value) numKind {
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return kInt
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return kUint
	case reflect.Float32, reflect.Float64:
		return kFloat
	}
	return kOther
}

// arith applies one of consul-template's math functions. The int, uint and
// float cases are those of funcs.go; mixed int/uint operands are computed in
// int64, and any float operand turns the operation into float64, except for
// modulo, which refuses floats.
func arith(name string, b, a interface{}, ints func(x, y int64) int64, uints func(x, y uint64) uint64,
	floats func(x, y float64) float64) (interface{}, error) {
	av, bv := reflect.ValueOf(a), reflect.ValueOf(b)
	ak, bk := kindOf(av), kindOf(bv)
	if ak == kOther || (floats == nil && ak == kFloat) {
		return nil, fmt.Errorf("%s: unknown type for %q (%T)", name, av, a)
	}
	if bk == kOther || (floats == nil && bk == kFloat) {
		return nil, fmt.Errorf("%s: unknown type for %q (%T)", name, bv, b)
	}
	switch {
	case ak == kUint && bk == kUint:
		return uints(av.Uint(), bv.Uint()), nil
	case ak != kFloat && bk != kFloat:
		return ints(toInt(av), toInt(bv)), nil
	default:
		return floats(toFloat(av), toFloat(bv)), nil
	}
}

func toInt(v reflect.Value) int64 {
	if kindOf(v) == kUint {
		return int64(v.Uint())
	}
	return v.Int()
}

func toFloat(v reflect.Value) float64 {
	switch kindOf(v) {
	case kInt:
		return float64(v.Int())
	case kUint:
		return float64(v.Uint())
	}
	return v.Float()
}

func add(b, a interface{}) (interface{}, error) {
	return arith("add", b, a, func(x, y int64) int64 { return x + y },
		func(x, y uint64) uint64 { return x + y }, func(x, y float64) float64 { return x + y })
}

func subtract(b, a interface{}) (interface{}, error) {
	return arith("subtract", b, a, func(x, y int64) int64 { return x - y },
		func(x, y uint64) uint64 { return x - y }, func(x, y float64) float64 { return x - y })
}

func multiply(b, a interface{}) (interface{}, error) {
	return arith("multiply", b, a, func(x, y int64) int64 { return x * y },
		func(x, y uint64) uint64 { return x * y }, func(x, y float64) float64 { return x * y })
}

// divide panics on an integer division by zero, as consul-template's does;
// text/template turns the panic into an execution error.
func divide(b, a interface{}) (interface{}, error) {
	return arith("divide", b, a, func(x, y int64) int64 { return x / y },
		func(x, y uint64) uint64 { return x / y }, func(x, y float64) float64 { return x / y })
}

func modulo(b, a interface{}) (interface{}, error) {
	return arith("modulo", b, a, func(x, y int64) int64 { return x % y },
		func(x, y uint64) uint64 { return x % y }, nil)
}

// minimum and maximum return one of the two operands, converted the way
// consul-template's funcs.go converts them (int64, uint64 or float64).
func minimum(b, a interface{}) (interface{}, error) { return pick("minimum", b, a, true) }

func maximum(b, a interface{}) (interface{}, error) { return pick("maximum", b, a, false) }

func pick(name string, b, a interface{}, min bool) (interface{}, error) {
	av, bv := reflect.ValueOf(a), reflect.ValueOf(b)
	ak, bk := kindOf(av), kindOf(bv)
	if ak == kOther {
		return nil, fmt.Errorf("%s: unknown type for %q (%T)", name, av, a)
	}
	if bk == kOther {
		return nil, fmt.Errorf("%s: unknown type for %q (%T)", name, bv, b)
	}
	var aFirst bool
	switch {
	case ak == kUint && bk == kUint:
		aFirst = av.Uint() < bv.Uint()
		if !min {
			aFirst = av.Uint() > bv.Uint()
		}
	case ak != kFloat && bk != kFloat:
		aFirst = toInt(av) < toInt(bv)
		if !min {
			aFirst = toInt(av) > toInt(bv)
		}
	default:
		aFirst = toFloat(av) < toFloat(bv)
		if !min {
			aFirst = toFloat(av) > toFloat(bv)
		}
	}
	if aFirst {
		return native(av), nil
	}
	return native(bv), nil
}

// native is the value as consul-template returns it: v.Int(), v.Uint() or v.Float().
func native(v reflect.Value) interface{} {
	switch kindOf(v) {
	case kInt:
		return v.Int()
	case kUint:
		return v.Uint()
	}
	return v.Float()
}
