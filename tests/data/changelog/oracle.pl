# The dpkg oracle for tests/distro/test_dpkg_changelog.py: dpkg's own changelog parser
# (Dpkg::Changelog::Debian, behind dpkg-parsechangelog) run over many files in one process.
#
# Reads a JSON list of jobs {"path": FILE, "since": [VERSION...]} on stdin; prints one JSON
# line per job: {"path", "entries": [{"version", "changes", "cves", "date"}...],
# "ranges": {VERSION: [versions of get_range({since => VERSION})]}}. A version dpkg finds
# invalid is "". "changes" counts change lines; "cves" are the CVE identifiers in them.
use strict;
use warnings;
use JSON::PP;
use Dpkg::Changelog::Debian;
use Dpkg::Compression::FileHandle;

my $json = JSON::PP->new->canonical->utf8;
my $jobs = do { local $/; $json->decode(<STDIN>) };
for my $job (@$jobs) {
    my $fh = Dpkg::Compression::FileHandle->new(filename => $job->{path});
    my $changelog = Dpkg::Changelog::Debian->new(verbose => 0);
    $changelog->parse($fh, $job->{path});
    close $fh;
    my @entries;
    for my $entry (@$changelog) {
        my $version = $entry->get_version;
        my @changes = @{$entry->get_part('changes') // []};
        my $text = join("\n", @changes);
        my %cves = map { uc($_) => 1 }
            ($text =~ /(?<![A-Za-z0-9])(CVE-[0-9]{4}-[0-9]{4,19})(?![0-9])/gi);
        my $date = $entry->get_timestamp // "";
        utf8::decode($date);
        push @entries, {
            version => defined $version ? $version->as_string : "",
            changes => scalar @changes,
            cves => [sort keys %cves],
            date => $date,
        };
    }
    my %ranges;
    for my $since (@{$job->{since} // []}) {
        my @range = $changelog->get_range({since => $since});
        $ranges{$since} = [map { my $v = $_->get_version; defined $v ? $v->as_string : "" }
                           @range];
    }
    print $json->encode({path => $job->{path}, entries => \@entries, ranges => \%ranges}), "\n";
}
