// tarlist prints, for each tar file named on the command line, one JSON line:
// whether Go's archive/tar (the reader Docker extracts layers with) accepts
// it, and every member as that reader returns it. Byte strings are hex so
// non-UTF-8 names compare exactly. Member data is read to the end (sparse
// files expanded) and hashed, as an extractor would consume it.
//
// Built and run by tests/tests/go_tar.rs; standard library only.
package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
)

type member struct {
	Typeflag int               `json:"typeflag"`
	Name     string            `json:"name"`
	Linkname string            `json:"linkname"`
	Size     int64             `json:"size"`
	Mode     int64             `json:"mode"`
	Uid      int               `json:"uid"`
	Gid      int               `json:"gid"`
	Uname    string            `json:"uname"`
	Gname    string            `json:"gname"`
	Mtime    [2]int64          `json:"mtime"`
	Atime    *[2]int64         `json:"atime"`
	Devmajor int64             `json:"devmajor"`
	Devminor int64             `json:"devminor"`
	Xattrs   map[string]string `json:"xattrs"`
	Pax      map[string]string `json:"pax"`
	Data     string            `json:"data"`
}

type result struct {
	Accepted bool     `json:"accepted"`
	Error    string   `json:"error"`
	Members  []member `json:"members"`
}

func hx(s string) string { return hex.EncodeToString([]byte(s)) }

func hexMap(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[hx(k)] = hx(v)
	}
	return out
}

func list(path string) result {
	res := result{Members: []member{}}
	f, err := os.Open(path)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer f.Close()
	tr := tar.NewReader(bufio.NewReader(f))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			res.Accepted = true
			return res
		}
		if err != nil {
			res.Error = err.Error()
			return res
		}
		sum := sha256.New()
		if _, err := io.Copy(sum, tr); err != nil {
			res.Error = err.Error()
			return res
		}
		m := member{
			Typeflag: int(h.Typeflag),
			Name:     hx(h.Name),
			Linkname: hx(h.Linkname),
			Size:     h.Size,
			Mode:     h.Mode,
			Uid:      h.Uid,
			Gid:      h.Gid,
			Uname:    hx(h.Uname),
			Gname:    hx(h.Gname),
			Mtime:    [2]int64{h.ModTime.Unix(), int64(h.ModTime.Nanosecond())},
			Devmajor: h.Devmajor,
			Devminor: h.Devminor,
			Xattrs:   hexMap(h.Xattrs),
			Pax:      hexMap(h.PAXRecords),
			Data:     hex.EncodeToString(sum.Sum(nil)),
		}
		if !h.AccessTime.IsZero() {
			m.Atime = &[2]int64{h.AccessTime.Unix(), int64(h.AccessTime.Nanosecond())}
		}
		res.Members = append(res.Members, m)
	}
}

func main() {
	out := json.NewEncoder(os.Stdout)
	for _, path := range os.Args[1:] {
		if err := out.Encode(list(path)); err != nil {
			os.Exit(2)
		}
	}
}
