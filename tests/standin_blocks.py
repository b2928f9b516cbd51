"""Stand-ins written like torchvision's BasicBlock and the CycleGAN/pix2pix ResnetBlock (same
class names, attribute names, structure and forward), so recgen.convert's structural recognition
and the fused blocks are tested against torch without those libraries."""

from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResnetBlock(nn.Module):
    def __init__(self, dim, padding_type="reflect", norm_layer=nn.InstanceNorm2d, use_dropout=False, use_bias=True):
        super().__init__()
        pad = {"reflect": [nn.ReflectionPad2d(1)], "replicate": [nn.ReplicationPad2d(1)], "zero": []}[padding_type]
        p = 1 if padding_type == "zero" else 0
        layers = pad + [nn.Conv2d(dim, dim, 3, padding=p, bias=use_bias), norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            layers += [nn.Dropout(0.5)]
        layers += pad + [nn.Conv2d(dim, dim, 3, padding=p, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)
