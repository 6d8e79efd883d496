package projector

// OptionsOf returns the options p runs with, defaults applied by New.
func OptionsOf(p *Projector) Options { return p.opts }
