// Command oracle renders a corpus of consul-template templates the way
// consul-template renders them in `-once` mode, over a fixed data set.
//
//	oracle DATA_JSON CORPUS_DIR OUT_DIR
//
// For every CORPUS_DIR/NAME.ctmpl (sorted) it writes OUT_DIR/NAME.out with the
// rendered bytes, or OUT_DIR/NAME.err with the parse or execution error.
//
// The data functions below are rewritten from consul-template's
// template/funcs.go and dependency/*.go for the case where every dependency
// has already been fetched. Where consul-template would wait forever for data
// (a `key` that does not exist, a `safeLs`/`safeTree` over an empty prefix),
// the oracle returns an error instead. The pure helpers live in funcs.go.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"
)

// missingKeyOption is what consul-template sets when `err_missing_key` is
// false, its default (template/template.go: tmpl.Option("missingkey=zero")).
const missingKeyOption = "missingkey=zero"

// Instance is one service instance of data.json.
type Instance struct {
	Node        string
	NodeAddress string
	ID          string
	Name        string
	Address     string
	Port        int
	Tags        []string
	Meta        map[string]string
	Status      string
}

// Data is data.json.
type Data struct {
	Instances []Instance        `json:"instances"`
	KV        map[string]string `json:"kv"`
	Env       map[string]string `json:"env"`
	kvKeys    []string          // sorted keys of KV
}

// ServiceTags is a slice of tags assigned to a Service (dependency.ServiceTags).
type ServiceTags []string

// HealthCheck mirrors the fields of api.HealthCheck that the data set fills.
type HealthCheck struct {
	Node        string
	CheckID     string
	Name        string
	Status      string
	Notes       string
	Output      string
	ServiceID   string
	ServiceName string
}

// HealthChecks mirrors api.HealthChecks.
type HealthChecks []*HealthCheck

// HealthService mirrors dependency.HealthService (fields in the same order;
// the ones the data set cannot fill are left out).
type HealthService struct {
	Node        string
	NodeAddress string
	ServiceMeta map[string]string
	Address     string
	ID          string
	Name        string
	Tags        ServiceTags
	Checks      HealthChecks
	Status      string
	Port        int
}

// CatalogSnippet mirrors dependency.CatalogSnippet.
type CatalogSnippet struct {
	Name string
	Tags ServiceTags
}

// KeyPair mirrors dependency.KeyPair.
type KeyPair struct {
	Path  string
	Key   string
	Value string

	CreateIndex uint64
	ModifyIndex uint64
	LockIndex   uint64
	Flags       uint64
	Session     string
}

// Regular expressions from consul-template's dependency package.
const (
	dcRe          = `(@(?P<dc>[[:word:]\.\-\_]+))?`
	keyRe         = `/?(?P<key>[^@\?]+)`
	filterRe      = `(\|(?P<filter>[[:word:]\,]+))?`
	serviceNameRe = `(?P<name>[[:word:]\-\_]+)`
	queryRe       = `(\?(?P<query>[[:word:]\-\_\=\&]+))?`
	nearRe        = `(~(?P<near>[[:word:]\.\-\_]+))?`
	prefixRe      = `/?(?P<prefix>[^@\?]+)`
	tagRe         = `((?P<tag>[[:word:]=:\.\-\_]+)\.)?`
)

var (
	healthServiceQueryRe   = regexp.MustCompile(`\A` + tagRe + serviceNameRe + queryRe + dcRe + nearRe + filterRe + `\z`)
	catalogServicesQueryRe = regexp.MustCompile(`\A` + queryRe + dcRe + `\z`)
	kvGetQueryRe           = regexp.MustCompile(`\A` + keyRe + queryRe + dcRe + `\z`)
	kvListQueryRe          = regexp.MustCompile(`\A` + prefixRe + queryRe + dcRe + `\z`)
)

const (
	healthAny      = "any"
	healthPassing  = "passing"
	healthWarning  = "warning"
	healthCritical = "critical"
	healthMaint    = "maintenance"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: oracle DATA_JSON CORPUS_DIR OUT_DIR")
		os.Exit(2)
	}
	data, err := loadData(os.Args[1])
	if err != nil {
		fail(err)
	}
	entries, err := os.ReadDir(os.Args[2])
	if err != nil {
		fail(err)
	}
	if err := os.MkdirAll(os.Args[3], 0o755); err != nil {
		fail(err)
	}
	for _, e := range entries { // os.ReadDir sorts by file name
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".ctmpl") {
			continue
		}
		text, err := os.ReadFile(filepath.Join(os.Args[2], e.Name()))
		if err != nil {
			fail(err)
		}
		base := filepath.Join(os.Args[3], strings.TrimSuffix(e.Name(), ".ctmpl"))
		os.Remove(base + ".out")
		os.Remove(base + ".err")
		out, rerr := render(data, e.Name(), string(text))
		if rerr != nil {
			err = os.WriteFile(base+".err", []byte(rerr.Error()), 0o644)
		} else {
			err = os.WriteFile(base+".out", out, 0o644)
		}
		if err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "oracle:", err)
	os.Exit(1)
}

func loadData(path string) (*Data, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d Data
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for k := range d.KV {
		d.kvKeys = append(d.kvKeys, k)
	}
	sort.Strings(d.kvKeys) // Consul returns KV listings in key order
	return &d, nil
}

// render parses and executes one template as consul-template's
// Template.Execute does (nil data, default delimiters).
func render(d *Data, name, text string) ([]byte, error) {
	tmpl := template.New(name)
	tmpl.Funcs(funcMap(d, tmpl))
	tmpl.Option(missingKeyOption)
	if _, err := tmpl.Parse(text); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, nil); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func funcMap(d *Data, tmpl *template.Template) template.FuncMap {
	return template.FuncMap{
		// Data functions.
		"key":             d.key,
		"keyExists":       d.keyExists,
		"keyOrDefault":    d.keyOrDefault,
		"ls":              d.listFunc("ls", true, lsFilter),
		"safeLs":          d.listFunc("safeLs", false, lsFilter),
		"tree":            d.listFunc("tree", true, treeFilter),
		"safeTree":        d.listFunc("safeTree", false, treeFilter),
		"service":         d.service,
		"services":        d.services,
		"env":             d.env,
		"executeTemplate": executeTemplateFunc(tmpl),
		"plugin":          plugin,

		// Helper functions (funcs.go).
		"base64Decode":    base64Decode,
		"base64Encode":    base64Encode,
		"base64URLDecode": base64URLDecode,
		"base64URLEncode": base64URLEncode,
		"byKey":           byKey,
		"byTag":           byTag,
		"byMeta":          byMeta,
		"contains":        contains,
		"containsAll":     containsSomeFunc(true, true),
		"containsAny":     containsSomeFunc(false, false),
		"containsNone":    containsSomeFunc(true, false),
		"containsNotAll":  containsSomeFunc(false, true),
		"explode":         explode,
		"in":              in,
		"indent":          indent,
		"loop":            loop,
		"join":            join,
		"split":           split,
		"trim":            trim,
		"trimPrefix":      trimPrefix,
		"trimSuffix":      trimSuffix,
		"trimSpace":       trimSpace,
		"parseBool":       parseBool,
		"parseFloat":      parseFloat,
		"parseInt":        parseInt,
		"parseJSON":       parseJSON,
		"parseUint":       parseUint,
		"replaceAll":      replaceAll,
		"regexReplaceAll": regexReplaceAll,
		"regexMatch":      regexMatch,
		"sha256Hex":       sha256Hex,
		"md5sum":          md5sum,
		"toLower":         toLower,
		"toUpper":         toUpper,
		"toTitle":         toTitle,
		"toJSON":          toJSON,
		"toJSONPretty":    toJSONPretty,
		"add":             add,
		"subtract":        subtract,
		"multiply":        multiply,
		"divide":          divide,
		"modulo":          modulo,
		"minimum":         minimum,
		"maximum":         maximum,
	}
}

// regexpMatch extracts the named groups of the first match (dependency.regexpMatch).
func regexpMatch(re *regexp.Regexp, q string) map[string]string {
	names := re.SubexpNames()
	match := re.FindAllStringSubmatch(q, -1)
	m := map[string]string{}
	if len(match) == 0 {
		return m
	}
	for i, n := range match[0] {
		if names[i] != "" {
			m[names[i]] = n
		}
	}
	return m
}

// consulQueryOpts validates the optional `?query` part (dependency.GetConsulQueryOpts).
func consulQueryOpts(m map[string]string, label string) (url.Values, error) {
	params := url.Values{}
	raw := m["query"]
	if raw == "" {
		return params, nil
	}
	params, err := url.ParseQuery(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid query: %q: %s", label, raw, err)
	}
	for k := range params {
		switch k {
		case "ns", "peer", "partition", "sameness-group":
		default:
			return nil, fmt.Errorf("%s: invalid query parameter key %q in query %q: supported keys: %s,%s,%s,%s",
				label, k, raw, "ns", "peer", "partition", "sameness-group")
		}
	}
	return params, nil
}

// parseKey is dependency.NewKVGetQuery: it returns the key to look up.
func parseKey(s string) (string, error) {
	if s != "" && !kvGetQueryRe.MatchString(s) {
		return "", fmt.Errorf("kv.get: invalid format: %q", s)
	}
	m := regexpMatch(kvGetQueryRe, s)
	if _, err := consulQueryOpts(m, "kv.get"); err != nil {
		return "", err
	}
	return m["key"], nil
}

func (d *Data) key(s string) (string, error) {
	if len(s) == 0 {
		return "", nil
	}
	k, err := parseKey(s)
	if err != nil {
		return "", err
	}
	v, ok := d.KV[k]
	if !ok {
		// consul-template blocks on a missing key (kv.block): one-shot rule.
		return "", fmt.Errorf("key %q does not exist", k)
	}
	return v, nil
}

func (d *Data) keyExists(s string) (bool, error) {
	if len(s) == 0 {
		return false, nil
	}
	k, err := parseKey(s)
	if err != nil {
		return false, err
	}
	_, ok := d.KV[k]
	return ok, nil
}

func (d *Data) keyOrDefault(s, def string) (string, error) {
	if len(s) == 0 {
		return def, nil
	}
	k, err := parseKey(s)
	if err != nil {
		return "", err
	}
	if v := d.KV[k]; v != "" {
		return v, nil
	}
	return def, nil
}

// kvList is dependency.KVListQuery.Fetch over data.json's KV.
func (d *Data) kvList(s string) ([]*KeyPair, string, error) {
	if s != "" && !kvListQueryRe.MatchString(s) {
		return nil, "", fmt.Errorf("kv.list: invalid format: %q", s)
	}
	m := regexpMatch(kvListQueryRe, s)
	if _, err := consulQueryOpts(m, "kv.list"); err != nil {
		return nil, "", err
	}
	prefix := m["prefix"]
	pairs := []*KeyPair{}
	for _, full := range d.kvKeys {
		if !strings.HasPrefix(full, prefix) {
			continue
		}
		pairs = append(pairs, &KeyPair{
			Path:  full,
			Key:   strings.TrimLeft(strings.TrimPrefix(full, prefix), "/"),
			Value: d.KV[full],
		})
	}
	return pairs, prefix, nil
}

// lsFilter keeps non-empty top-level keys (lsFunc).
func lsFilter(p *KeyPair) bool {
	return p.Key != "" && !strings.Contains(p.Key, "/")
}

// treeFilter drops folder markers (treeFunc).
func treeFilter(p *KeyPair) bool {
	parts := strings.Split(p.Key, "/")
	return parts[len(parts)-1] != ""
}

// listFunc builds ls, safeLs, tree and safeTree.
func (d *Data) listFunc(name string, emptyIsSafe bool, keep func(*KeyPair) bool) func(string) ([]*KeyPair, error) {
	return func(s string) ([]*KeyPair, error) {
		result := []*KeyPair{}
		if len(s) == 0 {
			return result, nil
		}
		pairs, _, err := d.kvList(s)
		if err != nil {
			return result, err
		}
		for _, p := range pairs {
			if keep(p) {
				result = append(result, p)
			}
		}
		if len(result) == 0 && !emptyIsSafe {
			// consul-template keeps waiting for data: one-shot rule.
			return result, fmt.Errorf("%s %q: no pairs", name, s)
		}
		return result, nil
	}
}

// service is serviceFunc + dependency.HealthServiceQuery.Fetch.
func (d *Data) service(s ...string) ([]*HealthService, error) {
	result := []*HealthService{}
	if len(s) == 0 || s[0] == "" {
		return result, nil
	}
	q := strings.Join(s, "|")
	if !healthServiceQueryRe.MatchString(q) {
		return nil, fmt.Errorf("health.service: invalid format: %q", q)
	}
	m := regexpMatch(healthServiceQueryRe, q)

	var filters []string
	if filter := m["filter"]; filter != "" {
		for _, f := range strings.Split(filter, ",") {
			f = strings.TrimSpace(f)
			switch f {
			case healthAny, healthPassing, healthWarning, healthCritical, healthMaint:
				filters = append(filters, f)
			case "":
			default:
				return nil, fmt.Errorf("health.service: invalid filter: %q in %q", f, q)
			}
		}
		sort.Strings(filters)
	} else {
		filters = []string{healthPassing}
	}
	params, err := consulQueryOpts(m, "health.service")
	if err != nil {
		return nil, err
	}
	if params.Get("sameness-group") != "" && params.Get("peer") != "" {
		return nil, fmt.Errorf("health.service: cannot specify both %s and %s", "peer", "sameness-group")
	}

	// Consul's ?passing filter drops every entry with a non-passing check.
	passingOnly := len(filters) == 1 && filters[0] == healthPassing
	for _, in := range d.Instances {
		if in.Name != m["name"] || (m["tag"] != "" && !hasTagFold(in.Tags, m["tag"])) {
			continue
		}
		checks := instanceChecks(in)
		status := aggregatedStatus(checks)
		if passingOnly && status != healthPassing {
			continue
		}
		if !acceptStatus(filters, status) {
			continue
		}
		address := in.Address
		if address == "" {
			address = in.NodeAddress
		}
		tags := append([]string{}, in.Tags...)
		sort.Strings(tags)
		result = append(result, &HealthService{
			Node:        in.Node,
			NodeAddress: in.NodeAddress,
			ServiceMeta: in.Meta,
			Address:     address,
			ID:          in.ID,
			Name:        in.Name,
			Tags:        ServiceTags(tags),
			Checks:      checks,
			Status:      status,
			Port:        in.Port,
		})
	}
	sort.Stable(byNodeThenID(result))
	return result, nil
}

// hasTagFold is Consul's service tag filter, which ignores case.
func hasTagFold(tags []string, want string) bool {
	for _, t := range tags {
		if strings.EqualFold(t, want) {
			return true
		}
	}
	return false
}

// instanceChecks is the single service check the data set implies.
func instanceChecks(in Instance) HealthChecks {
	c := &HealthCheck{
		Node:        in.Node,
		CheckID:     "service:" + in.ID,
		Name:        "Service '" + in.Name + "' check",
		Status:      in.Status,
		ServiceID:   in.ID,
		ServiceName: in.Name,
	}
	if in.Status == healthMaint {
		c.CheckID = "_service_maintenance:" + in.ID
		c.Name = "Service Maintenance Mode"
		c.Status = healthCritical
	}
	return HealthChecks{c}
}

// aggregatedStatus is api.HealthChecks.AggregatedStatus.
func aggregatedStatus(checks HealthChecks) string {
	var passing, warning, critical, maintenance bool
	for _, c := range checks {
		if c.CheckID == "_node_maintenance" || strings.HasPrefix(c.CheckID, "_service_maintenance:") {
			maintenance = true
			continue
		}
		switch c.Status {
		case healthPassing:
			passing = true
		case healthWarning:
			warning = true
		case healthCritical:
			critical = true
		default:
			return ""
		}
	}
	switch {
	case maintenance:
		return healthMaint
	case critical:
		return healthCritical
	case warning:
		return healthWarning
	case passing:
		return healthPassing
	default:
		return healthPassing
	}
}

// acceptStatus is dependency.acceptStatus.
func acceptStatus(list []string, s string) bool {
	for _, status := range list {
		if status == s || status == healthAny {
			return true
		}
	}
	return false
}

// byNodeThenID is dependency.ByNodeThenID.
type byNodeThenID []*HealthService

func (s byNodeThenID) Len() int      { return len(s) }
func (s byNodeThenID) Swap(i, j int) { s[i], s[j] = s[j], s[i] }
func (s byNodeThenID) Less(i, j int) bool {
	if s[i].Node < s[j].Node {
		return true
	} else if s[i].Node == s[j].Node {
		return s[i].ID < s[j].ID
	}
	return false
}

// services is servicesFunc + dependency.CatalogServicesQuery.Fetch: every
// registered service, whatever its health, with the union of its tags.
func (d *Data) services(s ...string) ([]*CatalogSnippet, error) {
	q := strings.Join(s, "")
	if !catalogServicesQueryRe.MatchString(q) {
		return nil, fmt.Errorf("catalog.services: invalid format: %q", q)
	}
	if _, err := consulQueryOpts(regexpMatch(catalogServicesQueryRe, q), "catalog.services"); err != nil {
		return nil, err
	}
	tags := map[string]map[string]bool{}
	for _, in := range d.Instances {
		if tags[in.Name] == nil {
			tags[in.Name] = map[string]bool{}
		}
		for _, t := range in.Tags {
			tags[in.Name][t] = true
		}
	}
	result := []*CatalogSnippet{}
	for name, set := range tags {
		list := []string{}
		for t := range set {
			list = append(list, t)
		}
		sort.Strings(list)
		result = append(result, &CatalogSnippet{Name: name, Tags: ServiceTags(list)})
	}
	sort.SliceStable(result, func(i, j int) bool { return result[i].Name < result[j].Name })
	return result, nil
}

// env reads only the variables the operator granted (runner's rule; the
// values of granted variables are consul-template's envFunc results).
func (d *Data) env(s string) (string, error) {
	if v, ok := d.Env[s]; ok {
		return v, nil
	}
	return "", fmt.Errorf("env %q is not granted", s)
}
