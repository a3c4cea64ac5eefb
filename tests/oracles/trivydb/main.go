// Command trivydb writes a Trivy vulnerability database (db/trivy.db and
// db/metadata.json, schema 2) holding exactly the OS-package advisories it is
// given, through trivy-db's own build pipeline (vulndb.Build: insert, optimize,
// cleanup), so Trivy reads it as it reads the published database.
//
// Usage: trivydb -o DIR < advisories.json
//
// The input is a JSON list of advisories:
//
//	[{"platform": "debian 12", "source": "debian", "package": "openssl",
//	  "id": "CVE-2024-0001", "fixed_version": "3.0.15-1~deb12u1",
//	  "severity": "HIGH", "title": "..."}]
//
// "platform" is the bucket Trivy looks advisories up in ("debian 12",
// "alpine 3.20", "rocky 9"), "package" the name Trivy looks up there (Debian: the
// source package; Alpine: the origin; Rocky, Alma: the binary rpm), "source" the data
// source ID ("debian", "alpine", "rocky"...) recorded for the bucket and the
// vulnerability details.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/aquasecurity/trivy-db/pkg/db"
	"github.com/aquasecurity/trivy-db/pkg/types"
	"github.com/aquasecurity/trivy-db/pkg/vulndb"
	"github.com/aquasecurity/trivy-db/pkg/vulnsrc"
)

const sourceName = "suture-test"

type advisory struct {
	Platform     string `json:"platform"`
	Source       string `json:"source"`
	Package      string `json:"package"`
	ID           string `json:"id"`
	FixedVersion string `json:"fixed_version"`
	Severity     string `json:"severity"`
	Title        string `json:"title"`
}

var dataSources = map[string]types.DataSource{
	"debian": {ID: "debian", Name: "Debian Security Tracker",
		URL: "https://salsa.debian.org/security-tracker-team/security-tracker"},
	"alpine": {ID: "alpine", Name: "Alpine Secdb", URL: "https://secdb.alpinelinux.org/"},
	"ubuntu": {ID: "ubuntu", Name: "Ubuntu CVE Tracker",
		URL: "https://git.launchpad.net/ubuntu-cve-tracker"},
	"rocky": {ID: "rocky", Name: "Rocky Linux updateinfo", URL: "https://download.rockylinux.org/pub/rocky/"},
	"alma":  {ID: "alma", Name: "AlmaLinux Product Errata", URL: "https://errata.almalinux.org/"},
}

// source is a trivy-db vulnsrc.VulnSrc whose data is the advisories list.
type source struct {
	advisories []advisory
	dbc        db.Config
}

func (s source) Name() types.SourceID { return sourceName }

func (s source) Update(string) error {
	return s.dbc.BatchUpdate(func(tx *bolt.Tx) error {
		for _, a := range s.advisories {
			ds, ok := dataSources[a.Source]
			if !ok {
				return fmt.Errorf("%s: unknown source %q", a.ID, a.Source)
			}
			sev := types.SeverityUnknown
			if a.Severity != "" {
				var err error
				if sev, err = types.NewSeverity(a.Severity); err != nil {
					return fmt.Errorf("%s: %w", a.ID, err)
				}
			}
			detail := types.Advisory{FixedVersion: a.FixedVersion, Severity: sev}
			if err := s.dbc.PutAdvisoryDetail(tx, a.ID, a.Package, []string{a.Platform}, detail); err != nil {
				return err
			}
			vuln := types.VulnerabilityDetail{Title: a.Title, Severity: sev}
			if err := s.dbc.PutVulnerabilityDetail(tx, a.ID, ds.ID, vuln); err != nil {
				return err
			}
			if err := s.dbc.PutVulnerabilityID(tx, a.ID); err != nil {
				return err
			}
			if err := s.dbc.PutDataSource(tx, a.Platform, ds); err != nil {
				return err
			}
		}
		return nil
	})
}

func run(out string) error {
	var advisories []advisory
	dec := json.NewDecoder(os.Stdin)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&advisories); err != nil {
		return fmt.Errorf("reading advisories: %w", err)
	}
	dir := filepath.Join(out, "db")
	if err := db.Init(dir); err != nil {
		return err
	}
	defer db.Close()
	src := source{advisories: advisories}
	srcs := map[types.SourceID]vulnsrc.VulnSrc{src.Name(): src}
	// A year of validity: Trivy never wants to refresh it (and runs with --skip-db-update).
	tdb := vulndb.New(out, dir, 365*24*time.Hour, vulndb.WithVulnSrcs(srcs))
	return tdb.Build([]string{sourceName})
}

func main() {
	out := flag.String("o", "", "cache directory to write db/trivy.db and db/metadata.json under")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "usage: trivydb -o DIR < advisories.json")
		os.Exit(2)
	}
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "trivydb:", err)
		os.Exit(1)
	}
}
